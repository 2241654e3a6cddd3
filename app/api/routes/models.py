"""Fine-tuned models: report, weights, predictions, export, evaluation, and registration as a
new source."""

from typing import Annotated, Any

from fastapi import APIRouter, File, Query, Response, UploadFile, status
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.responses import FileResponse, JSONResponse
from starlette.background import BackgroundTask

from app.api.deps import (
    PAGE_PROBLEMS,
    ContextDep,
    ModelId,
    PageSize,
    PageToken,
    SessionDep,
    StateDep,
)
from app.api.idempotency import IdempotencyHeader, digest_files, idempotent
from app.api.problems import problem_responses
from app.api.routes.jobs import job_out
from app.errors import TooLarge
from app.finetune.export import ExportFormat, preprocessing_spec
from app.jobs import service as jobs
from app.models import FinetunedModel, Job, Source
from app.schemas import (
    ArchiveEvaluation,
    JobOut,
    ModelOut,
    Page,
    PredictionsOut,
    PreprocessingOut,
    RegisterRequest,
    SourceOut,
)
from app.services import evaluations
from app.services import models as service
from app.zoo import plots

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get(
    "",
    response_model=Page[ModelOut],
    summary="List fine-tuned models, newest first",
    responses=PAGE_PROBLEMS,
)
def list_models(
    session: SessionDep,
    page_size: PageSize = 50,
    page_token: PageToken = None,
) -> Page[ModelOut]:
    """One page of models."""
    rows, next_token = service.list_models(session, page_size, page_token)
    return Page[ModelOut](
        items=[ModelOut.model_validate(r) for r in rows], next_page_token=next_token
    )


@router.get("/{model_id}", response_model=ModelOut, summary="A fine-tuned model and its report")
def get_model(session: SessionDep, model_id: ModelId) -> FinetunedModel:
    """Per-epoch metrics, validation accuracy, per-class accuracy, confusion matrix, schedule."""
    return service.get_model(session, model_id)


@router.get(
    "/{model_id}/weights",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
    summary="Download a fine-tuned model's weights (safetensors)",
)
def download_weights(state: StateDep, session: SessionDep, model_id: ModelId) -> FileResponse:
    """The weights exactly as the job wrote them."""
    row = service.get_model(session, model_id)
    return FileResponse(
        service.model_weights_path(state.store, row),
        media_type="application/octet-stream",
        filename=f"model-{model_id}.safetensors",
    )


@router.post(
    "/{model_id}/predict",
    response_model=PredictionsOut,
    summary="Classify uploaded images",
    responses=problem_responses(
        _413="More files than P2L_MAX_PREDICT_FILES, or one above P2L_MAX_IMAGE_BYTES",
        _422="A file is not a usable image",
    ),
)
def predict(
    state: StateDep,
    session: SessionDep,
    model_id: ModelId,
    files: Annotated[
        list[UploadFile],
        # The multipart parser takes 1,000 files at most; P2L_MAX_PREDICT_FILES counts too.
        File(max_length=1000, description="One or more images (P2L_MAX_PREDICT_FILES)"),
    ],
    top_k: Annotated[
        int,
        Query(ge=1, le=100, description="Labels per image, most probable first (1 to 100)."),
    ] = 3,
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
    row = service.get_model(session, model_id)
    network = state.models.get(state.store, row)
    predictions = service.predict(network, row, images, settings.max_image_pixels, top_k)
    return PredictionsOut(model_id=model_id, predictions=predictions)


@router.delete(
    "/{model_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a fine-tuned model and its weights",
)
def delete_model(state: StateDep, session: SessionDep, model_id: ModelId) -> Response:
    """A source registered from the model keeps its own copy of the weights."""
    service.delete_model(session, state.store, state.models, model_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{model_id}/register",
    status_code=status.HTTP_201_CREATED,
    response_model=SourceOut,
    summary="Add a fine-tuned model to the zoo as a new source",
    responses=problem_responses(
        _409="The model is already a source (the detail and source_id name it)",
        _422="The model has more classes than P2L_MAX_SOURCE_CLASSES",
    ),
)
def register(ctx: ContextDep, model_id: ModelId, body: RegisterRequest | None = None) -> Source:
    """The new source's signature is its target dataset's: the zoo grows with use. The body
    may be left out (the default name)."""
    return service.register_model(ctx, model_id, body.name if body is not None else None)


@router.get(
    "/{model_id}/preprocessing",
    response_model=PreprocessingOut,
    summary="How to feed the model an image (the preprocessing.json of its exports)",
)
def get_preprocessing(session: SessionDep, model_id: ModelId) -> dict[str, Any]:
    """Input size, mean and std, class names, layout, colour, scale and the resize in words."""
    row = service.get_model(session, model_id)
    return preprocessing_spec(row.architecture, row.input_size, row.class_names)


@router.get(
    "/{model_id}/export",
    response_class=FileResponse,
    responses={
        200: {
            "content": {"application/zip": {}},
            "description": "model file, preprocessing.json, labels.txt, predict.py, README.md",
        },
        **problem_responses(_422="format is neither onnx nor torchscript"),
    },
    summary="Export the model as ONNX or TorchScript: a zip with its preprocessing spec, "
    "labels, model card and inference script",
)
def export(
    state: StateDep,
    ctx: ContextDep,
    model_id: ModelId,
    format: Annotated[
        ExportFormat,
        Query(description="onnx (model.onnx, opset 18, dynamic batch) or torchscript (model.pt)"),
    ] = "onnx",
) -> FileResponse:
    """A zip of ``model.onnx`` or ``model.pt``, ``preprocessing.json``, ``labels.txt`` (class
    names in output order), ``README.md`` (the model card: source, target, schedule,
    metrics) and ``predict.py`` (``python predict.py IMAGE...`` prints path, label and
    probability per image, with onnxruntime, numpy and Pillow; torch for TorchScript): run
    it anywhere without this project. The first export of a model in a format is built
    (seconds) and kept with the model, counted in its project's storage (unless that would
    pass the storage quota); later ones are served as stored. Deleting the model deletes
    them."""
    exported = service.export_model(ctx, state.models, model_id, format)
    cleanup = exported.discard
    return FileResponse(
        exported.path,
        media_type="application/zip",
        filename=exported.filename,
        background=BackgroundTask(state.store.discard, cleanup) if cleanup else None,
    )


@router.get(
    "/{model_id}/confusion.png",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "PNG image"},
        **problem_responses(_404="No such model, or it has no held-out split to report on"),
    },
    summary="The model's confusion matrix on its test (or validation) split, as a picture",
)
def confusion_png(session: SessionDep, model_id: ModelId) -> Response:
    """Rows: true class, columns: predicted class, counts in the cells; the title names the
    split and the accuracy."""
    confusion = service.confusion(session, model_id)
    png = plots.confusion_plot(confusion.matrix, confusion.class_names, confusion.title)
    return Response(png, media_type="image/png")


@router.get(
    "/{model_id}/misclassified/{k}",
    response_class=Response,
    responses={
        200: {"content": {"image/*": {}}, "description": "The image file as uploaded"},
        **problem_responses(
            _404="No such model or k, or the target dataset (or the image) is gone"
        ),
    },
    summary="The k-th misclassified image of the model's evaluation report (0-based)",
)
def misclassified_image(
    ctx: ContextDep,
    model_id: ModelId,
    k: Annotated[
        int,
        PathParam(
            ge=0,
            description="0-based index into the model's `report.evaluation.misclassified` "
            "(most confident mistakes first).",
        ),
    ],
) -> Response:
    """Its bytes from the model's target dataset; ``report.evaluation.misclassified[k]``
    says its name, true and predicted label."""
    data, media_type = service.misclassified_image(ctx, model_id, k)
    return Response(data, media_type=media_type)


@router.post(
    "/{model_id}/evaluate",
    response_model=ArchiveEvaluation,
    responses={
        202: {"model": JobOut, "description": "Too many images to answer at once: a job"},
        **problem_responses(
            _413="Upload above P2L_MAX_UPLOAD_BYTES; nothing is stored",
            _422="Unusable archive, no usable image, or class folders the model does not know",
        ),
    },
    summary="Evaluate the model on a labelled archive (one folder per class)",
)
def evaluate_archive(
    state: StateDep,
    ctx: ContextDep,
    idempotency_key: IdempotencyHeader,
    model_id: ModelId,
    file: Annotated[
        UploadFile,
        File(
            description=".zip, .tar or .tar.gz of one folder per class (class/image.png), "
            "folders named like the model's classes"
        ),
    ],
) -> Any:
    """Per-class precision, recall and F1, the confusion matrix and the misclassified images
    (split ``archive``, images named class/file as in the archive). Up to
    P2L_EVALUATE_SYNC_MAX_IMAGES (500) images: 200 with the report; more: 202 with a job of
    kind ``evaluate`` (Location), whose result is the report. The archive is checked like a
    dataset upload."""
    session = ctx.session
    row = service.get_model(session, model_id)
    digest = digest_files([file.file], model_id)
    with idempotent(state.sessions, session, "evaluations", idempotency_key, digest) as claim:
        replayed = claim.replay_id is not None
        if claim.replay_id is not None:
            outcome: dict[str, Any] | Job = jobs.get_job(session, claim.replay_id)
        else:
            outcome = evaluations.evaluate_upload(ctx, state.models, row, file.file)
            if isinstance(outcome, Job):
                claim.complete(outcome.id)  # a report made at once has nothing to replay
    if isinstance(outcome, dict):
        return outcome
    headers = {"Location": f"/v1/jobs/{outcome.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    body = job_out(state, session, outcome)
    return JSONResponse(jsonable_encoder(body), status_code=202, headers=headers)
