"""Target/source datasets: upload an archive of class folders, list, get, delete."""

from collections import Counter
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Response, UploadFile, status

from app.api.deps import (
    PAGE_PROBLEMS,
    ContextDep,
    DatasetId,
    PageSize,
    PageToken,
    SessionDep,
    StateDep,
)
from app.api.idempotency import IdempotencyHeader, digest_files, idempotent
from app.api.problems import problem_responses
from app.models import Dataset
from app.schemas import DatasetCreated, DatasetOut, Page, SignatureOut
from app.services import datasets as service
from app.services.finetunes import ensure_no_active_job_uses

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def dataset_out(dataset: Dataset) -> DatasetOut:
    """Response view of a dataset row."""
    return DatasetOut(
        id=dataset.id,
        name=dataset.name,
        created_at=dataset.created_at,
        num_images=dataset.num_images,
        num_classes=len(dataset.class_counts),
        classes=[{"name": c, "count": n} for c, n in dataset.class_counts.items()],
        signature={
            "n": dataset.num_images,
            "feature_dim": dataset.feature_dim,
            "reference_sha256": dataset.reference_sha256,
        },
    )


def replayed_rejections(dataset: Dataset) -> dict[str, object]:
    """The rejection summary of an upload as stored (for an Idempotency-Key replay)."""
    listed = dataset.rejected
    if dataset.rejected_counts is not None and dataset.rejected_total is not None:
        counts, total = dataset.rejected_counts, dataset.rejected_total
    else:  # stored before revision 0005, with only the listed rejections: count those
        counts = dict(Counter(str(r.get("kind", "other")) for r in listed))
        total = len(listed)
    return {"rejected": listed, "rejected_counts": counts, "rejected_total": total}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetCreated,
    summary="Upload a dataset archive (one folder per class)",
    responses=problem_responses(
        _413="Upload above P2L_MAX_UPLOAD_BYTES; nothing is stored",
        _409="The project has a dataset of this name already; nothing is stored",
        _422="Unusable archive (bomb, layout, < 2 classes) or name; nothing is stored",
    ),
)
def upload_dataset(
    state: StateDep,
    ctx: ContextDep,
    response: Response,
    idempotency_key: IdempotencyHeader,
    file: Annotated[
        UploadFile,
        File(
            description="A .zip, .tar, .tar.gz, .tar.bz2 or .tar.xz archive with one folder "
            "per class: `dress/0001.png`, `shirt/0001.jpg`, ... (optionally inside one top "
            "folder)."
        ),
    ],
    name: Annotated[
        str | None,
        Form(
            max_length=255,  # P2L_MAX_NAME_BYTES is at most 255: so are the characters
            description="Its handle: unique in the project (a name it holds already: 409), "
            "not 32 hex digits, at most P2L_MAX_NAME_BYTES (200) UTF-8 bytes. Left out: the "
            "archive's file name, numbered (`garments-2`) if the project holds it already.",
            examples=["garments"],
        ),
    ] = None,
) -> DatasetCreated:
    """Validate every image, compute the signature, and store the dataset.

    The answer lists classes and counts, the first P2L_MAX_REJECTED_LISTED rejected files
    with their kind and reason, and every rejected file counted by kind.
    """
    session = ctx.session
    given_name = name
    name = name or service.default_dataset_name(file.filename, state.settings)
    digest = digest_files([file.file], name)
    with idempotent(state.sessions, session, "datasets", idempotency_key, digest) as claim:
        if claim.replay_id is not None:
            dataset = service.get_dataset(session, claim.replay_id)
            response.headers["Idempotent-Replayed"] = "true"
            body = DatasetCreated(
                **dataset_out(dataset).model_dump(), **replayed_rejections(dataset)
            )
        else:
            result = service.ingest_dataset(ctx, file.file, name, number_if_taken=not given_name)
            claim.complete(result.dataset.id)
            body = DatasetCreated(
                **dataset_out(result.dataset).model_dump(), **result.folder.rejected.summary()
            )
    response.headers["Location"] = f"/v1/datasets/{body.id}"
    return body


@router.get(
    "",
    response_model=Page[DatasetOut],
    summary="List datasets, newest first",
    responses=PAGE_PROBLEMS,
)
def list_datasets(
    session: SessionDep,
    page_size: PageSize = 50,
    page_token: PageToken = None,
) -> Page[DatasetOut]:
    """One page of datasets; follow ``next_page_token`` for more."""
    rows, next_token = service.list_datasets(session, page_size, page_token)
    return Page[DatasetOut](items=[dataset_out(r) for r in rows], next_page_token=next_token)


@router.get("/{dataset_id}", response_model=DatasetOut, summary="Get one dataset")
def get_dataset(session: SessionDep, dataset_id: DatasetId) -> DatasetOut:
    """Classes, counts and signature summary of a dataset."""
    return dataset_out(service.get_dataset(session, dataset_id))


@router.get(
    "/{dataset_id}/signature",
    response_model=SignatureOut,
    responses={200: {"content": {"application/octet-stream": {}}}},
    summary="Get a dataset's signature",
)
def get_signature(
    state: StateDep,
    session: SessionDep,
    dataset_id: DatasetId,
    format: Annotated[
        Literal["json", "safetensors"],
        Query(
            description="json: the vectors as JSON numbers; safetensors: the binary file "
            "POST /v1/sources accepts as `signature`."
        ),
    ] = "json",
) -> Response | dict[str, object]:
    """Mean, per-class means and per-dimension variance in reference-feature space.

    ``format=safetensors`` gives the file ``POST /v1/sources`` accepts as ``signature``.
    """
    dataset = service.get_dataset(session, dataset_id)
    signature = service.dataset_signature(state.store, dataset)
    if format == "safetensors":
        return Response(
            signature.to_bytes(),
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{dataset_id}.signature"'},
        )
    return signature.to_json()


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a dataset and its files",
)
def delete_dataset(state: StateDep, session: SessionDep, dataset_id: DatasetId) -> Response:
    """Remove the dataset's row, images and signature (409 while a job needs it)."""
    ensure_no_active_job_uses(session, dataset_id=dataset_id)
    service.delete_dataset(session, state.store, dataset_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
