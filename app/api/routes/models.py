"""Fine-tuned models: report, weights, predictions, and registration as a new source."""

from typing import Annotated

from fastapi import APIRouter, Body, File, Query, Response, UploadFile, status
from fastapi.responses import FileResponse

from app.api.deps import PAGE_PROBLEMS, ApiKeyRequired, PageToken, SessionDep, StateDep
from app.api.problems import problem_responses
from app.errors import TooLarge
from app.jobs import finetunes
from app.models import FinetunedModel, Source
from app.schemas import ModelOut, Page, PredictionsOut, SourceOut

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get(
    "",
    response_model=Page[ModelOut],
    summary="List fine-tuned models, newest first",
    responses=PAGE_PROBLEMS,
)
def list_models(
    session: SessionDep,
    page_size: Annotated[int, Query(ge=1, le=200)] = 50,
    page_token: PageToken = None,
) -> Page[ModelOut]:
    """One page of models."""
    rows, next_token = finetunes.list_models(session, page_size, page_token)
    return Page[ModelOut](
        items=[ModelOut.model_validate(r) for r in rows], next_page_token=next_token
    )


@router.get("/{model_id}", response_model=ModelOut, summary="A fine-tuned model and its report")
def get_model(session: SessionDep, model_id: str) -> FinetunedModel:
    """Per-epoch metrics, validation accuracy, per-class accuracy, confusion matrix, schedule."""
    return finetunes.get_model(session, model_id)


@router.get(
    "/{model_id}/weights",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
    summary="Download a fine-tuned model's weights (safetensors)",
)
def download_weights(state: StateDep, session: SessionDep, model_id: str) -> FileResponse:
    """The weights exactly as the job wrote them."""
    row = finetunes.get_model(session, model_id)
    return FileResponse(
        finetunes.model_weights_path(state.store, row),
        media_type="application/octet-stream",
        filename=f"model-{model_id}.safetensors",
    )


@router.post(
    "/{model_id}/predict",
    response_model=PredictionsOut,
    dependencies=[ApiKeyRequired],
    summary="Classify uploaded images",
    responses=problem_responses(
        _413="More files than P2L_MAX_PREDICT_FILES, or one above P2L_MAX_IMAGE_BYTES",
        _422="A file is not a usable image",
    ),
)
def predict(
    state: StateDep,
    session: SessionDep,
    model_id: str,
    files: Annotated[list[UploadFile], File(description="One or more images")],
    top_k: Annotated[int, Query(ge=1, le=100)] = 3,
) -> PredictionsOut:
    """Top-k labels with probabilities for every image, in upload order."""
    settings = state.settings
    if len(files) > settings.max_predict_files:
        raise TooLarge(f"{len(files)} files sent; at most {settings.max_predict_files} per request")
    images = []
    for i, upload in enumerate(files):
        data = upload.file.read(settings.max_image_bytes + 1)
        if len(data) > settings.max_image_bytes:
            raise TooLarge(
                f"file {i} is larger than the limit of {settings.max_image_bytes:,} bytes"
            )
        images.append((upload.filename or f"file{i}", data))
    row = finetunes.get_model(session, model_id)
    network = state.models.get(state.store, row)
    predictions = finetunes.predict(network, row, images, settings.max_image_pixels, top_k)
    return PredictionsOut(model_id=model_id, predictions=predictions)


@router.delete(
    "/{model_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[ApiKeyRequired],
    summary="Delete a fine-tuned model and its weights",
)
def delete_model(state: StateDep, session: SessionDep, model_id: str) -> Response:
    """A source registered from the model keeps its own copy of the weights."""
    finetunes.delete_model(session, state.store, state.models, model_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{model_id}/register",
    status_code=status.HTTP_201_CREATED,
    response_model=SourceOut,
    dependencies=[ApiKeyRequired],
    summary="Add a fine-tuned model to the zoo as a new source",
    responses=problem_responses(
        _409="The model is already a source (the detail and source_id name it)",
        _422="The model has more classes than P2L_MAX_SOURCE_CLASSES",
    ),
)
def register(
    state: StateDep,
    session: SessionDep,
    model_id: str,
    name: Annotated[str | None, Body(embed=True, max_length=200)] = None,
) -> Source:
    """The new source's signature is its target dataset's: the zoo grows with use."""
    return finetunes.register_model(
        session, state.store, state.index, state.reference, model_id, name,
        max_classes=state.settings.max_source_classes,
        max_name_bytes=state.settings.max_name_bytes,
    )  # fmt: skip
