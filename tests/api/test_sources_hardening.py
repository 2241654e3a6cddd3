"""The zoo cannot be poisoned through POST /v1/sources, and a model becomes at most one source.

Issue #9: NaN/Inf weights and signatures, absurd class counts and class numbers are refused
before anything is stored or allocated; concurrent registrations of one fine-tuned model
leave exactly one source, enforced by the database.
"""

import dataclasses
import itertools
import json
import resource
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import safetensors.numpy
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save
from sqlalchemy import create_engine, func, select

from app.families import build_model
from app.models import Source
from app.p2l.signature import DatasetSignature
from app.zoo.bundled import BUNDLED_DIR
from tests.helpers import (
    upload_target,
    wait_for_job,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# A real signature of the bundled reference: 10 digit classes, 1,132 images.
SIGNATURE = DatasetSignature.from_bytes(
    (BUNDLED_DIR / "sources" / "digits_1100.signature.safetensors").read_bytes()
)


def small_weights(dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A freshly initialised compact_cnn_small with 5 classes: a valid upload."""
    torch.manual_seed(0)
    return {
        k: v.to(dtype) if v.is_floating_point() else v
        for k, v in build_model("compact_cnn_small", 5).state_dict().items()
    }


SOURCE_NUMBERS = itertools.count(1)


def register(
    client: TestClient,
    weights: dict[str, torch.Tensor],
    signature: DatasetSignature = SIGNATURE,
    num_classes: int = 5,
    class_names: list[str] | None = None,
) -> dict:
    """POST /v1/sources with safetensors weights and signature, under a name of its own
    (names are unique); returns status and body."""
    name = f"source-{next(SOURCE_NUMBERS)}"
    form = {"architecture": "compact_cnn_small", "num_classes": str(num_classes), "name": name}
    if class_names is not None:
        form["class_names"] = json.dumps(class_names)
    response = client.post(
        "/v1/sources",
        files={
            "weights": ("w.safetensors", save(weights)),
            "signature": ("s.safetensors", signature_bytes(signature)),
        },
        data=form,
    )
    return {"status": response.status_code, **response.json()}


def signature_bytes(signature: DatasetSignature) -> bytes:
    """The signature file format, each array written with the dtype it has (no casts)."""
    fields = ("class_counts", "mean", "class_means", "variance")
    return safetensors.numpy.save(
        {name: getattr(signature, name) for name in fields},
        metadata={
            "class_names": json.dumps(signature.class_names),
            "reference_sha256": signature.reference_sha256,
        },
    )


def first_for(client: TestClient, target: str) -> str | int:
    """Id of the source P2L ranks first for the target (the status if ranking fails)."""
    response = client.post("/v1/rankings", json={"target_dataset_id": target})
    if response.status_code != 201:
        return response.status_code
    return response.json()["results"][0]["source_id"]


def zoo_state(client: TestClient, data_dir: Path) -> tuple[list[str], list[Path]]:
    """Source ids the service lists and files under data_dir/sources."""
    ids = [s["id"] for s in client.get("/v1/sources?page_size=200").json()["items"]]
    return ids, sorted(p for p in (data_dir / "sources").rglob("*") if p.is_file())


def with_value(
    array: np.ndarray, value: float, dtype: type | None = None, first: int = 1
) -> np.ndarray:
    """A copy of ``array`` (optionally as ``dtype``) whose ``first`` elements are ``value``."""
    changed = array.astype(dtype or array.dtype, copy=True)
    changed.flat[:first] = value
    return changed


@pytest.mark.api
def test_non_finite_weights_are_refused_and_nothing_is_kept(
    client: TestClient, data_dir: Path
) -> None:
    before = zoo_state(client, data_dir)
    poisoned = {
        ("head.bias", torch.float32): float("nan"),
        ("stem.0.weight", torch.float32): float("inf"),
        ("head.weight", torch.float16): float("-inf"),  # float16 files are accepted
    }
    outcome = {}
    for (key, dtype), value in poisoned.items():
        weights = small_weights(dtype)
        weights[key].view(-1)[-1] = value
        response = register(client, weights)
        outcome[key] = (response["status"], response.get("detail", ""))
    assert outcome == {
        key: (422, f"weights {key!r} hold NaN or infinite values") for key, _ in poisoned
    }
    assert zoo_state(client, data_dir) == before
    # The same weights, finite, are welcome: the refusals above were about the numbers.
    assert register(client, small_weights(torch.float16))["status"] == 201


@pytest.mark.system
def test_poisoned_signatures_are_refused_and_the_map_still_draws(
    make_client: Callable[..., TestClient], database_url: str | None, data_dir: Path
) -> None:
    client = make_client(database_url=database_url)
    target = upload_target(client, "digits_fewshot")
    first = first_for(client, target)
    before = zoo_state(client, data_dir)
    counts, mean = SIGNATURE.class_counts, SIGNATURE.mean
    poisoned = {
        "NaN mean": {"mean": with_value(mean, np.nan)},
        "Inf class mean": {"class_means": with_value(SIGNATURE.class_means, np.inf)},
        "NaN variance": {"variance": with_value(SIGNATURE.variance, np.nan)},
        # Finite in float32, but their sum and squares are not.
        "huge mean": {"mean": with_value(mean, 3e38, first=2)},
        # 2**50 images would put the source first for every target (lambda * log n); it
        # and 2**62 overflow the 32-bit num_images column (on PostgreSQL: a 500).
        "2**50 images": {"class_counts": with_value(counts, 2**50)},
        "2**62 images": {"class_counts": with_value(counts, 2**62)},
        # Four of them wrap the int64 total round to zero.
        "int64 wrap-around": {"class_counts": np.full_like(counts, 2**62)},
        "float counts": {"class_counts": with_value(counts, np.nan, np.float64)},
    }
    outcome: dict[str, object] = {}
    for case, change in poisoned.items():
        response = register(client, small_weights(), dataclasses.replace(SIGNATURE, **change))
        # The map is everyone's: it must still draw after each attempt.
        picture = client.get("/v1/sources/map.png")
        outcome[case] = (
            response["status"],
            response.get("detail", "").split(":")[0],
            picture.status_code,
            picture.content[:8],
        )
    outcome["first for the target"] = first_for(client, target)
    # One comparison, so that a failure shows every case at once.
    assert outcome == {
        **{case: (422, "signature file is not usable", 200, PNG_MAGIC) for case in poisoned},
        "first for the target": first,
    }
    assert zoo_state(client, data_dir) == before
    # Up to the cap a count is data, not poison: 10**9 images in all is accepted.
    large = dataclasses.replace(SIGNATURE, class_counts=np.full_like(counts, 10**8))
    accepted = register(client, small_weights(), large)
    assert accepted["status"] == 201 and accepted["num_images"] == 10**9, accepted
    one_more = dataclasses.replace(large, class_counts=with_value(large.class_counts, 10**8 + 1))
    assert register(client, small_weights(), one_more)["status"] == 422
    assert client.get("/v1/sources/map.png").status_code == 200


@pytest.mark.api
def test_num_classes_above_the_limit_is_refused_before_any_model_is_built(
    client: TestClient, data_dir: Path
) -> None:
    before = zoo_state(client, data_dir)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    # A 4,000,000-way head of compact_cnn_small alone is 64 x 4e6 floats: 1 GB.
    refused = register(client, small_weights(), num_classes=4_000_000)
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    grown_mib = (peak_after - peak_before) / 1024
    assert grown_mib < 100, f"{grown_mib:.0f} MiB allocated for a refused upload"
    assert refused["status"] == 422, refused
    assert "P2L_MAX_SOURCE_CLASSES" in refused["detail"]
    assert register(client, small_weights(), num_classes=10_001)["status"] == 422
    assert zoo_state(client, data_dir) == before


def with_classes(names: list[str]) -> DatasetSignature:
    """The bundled signature with ``names`` as its classes (one image each): valid otherwise."""
    means = np.resize(SIGNATURE.class_means, (len(names), SIGNATURE.feature_dim))
    counts = np.ones(len(names), dtype=np.int64)
    return dataclasses.replace(SIGNATURE, class_names=names, class_counts=counts, class_means=means)


@pytest.mark.api
def test_too_many_classes_and_too_long_class_names_are_refused_and_nothing_is_kept(
    client: TestClient, data_dir: Path
) -> None:
    # Every class name is stored with the source and sent in each page of GET /v1/sources.
    before = zoo_state(client, data_dir)
    too_long = "é" * 150  # 150 characters, but 300 UTF-8 bytes: above P2L_MAX_NAME_BYTES=200
    digits = SIGNATURE.class_names
    attempts = {  # case: (what is sent, the setting the refusal names)
        "10,001 signature classes": (
            {"signature": with_classes([f"c{i}" for i in range(10_001)])},
            "P2L_MAX_SOURCE_CLASSES",
        ),
        "a 300-byte signature class": (
            {"signature": with_classes([too_long, *digits[1:]])},
            "P2L_MAX_NAME_BYTES",
        ),
        "a 300-byte class_names field": (
            {"class_names": [too_long, *digits[1:5]]},
            "P2L_MAX_NAME_BYTES",
        ),
    }
    outcome = {}
    for case, (change, setting) in attempts.items():
        response = register(client, small_weights(), **change)
        outcome[case] = (response["status"], setting in response.get("detail", ""))
    assert outcome == {case: (422, True) for case in attempts}
    assert zoo_state(client, data_dir) == before
    # At the limits they are data: 10,000 classes, and names of 200 bytes.
    many = register(client, small_weights(), with_classes([f"c{i}" for i in range(10_000)]))
    assert many["status"] == 201 and len(many["class_counts"]) == 10_000, many["status"]
    at_limit = "é" * 100
    accepted = register(
        client,
        small_weights(),
        with_classes([at_limit, *digits[1:]]),
        class_names=[at_limit, *digits[1:5]],
    )
    assert accepted["status"] == 201, accepted
    assert accepted["class_names"][0] == at_limit and at_limit in accepted["class_counts"]


def fine_tuned_model(client: TestClient) -> str:
    """A real, short fine-tune of a bundled digits source on the digits few-shot target."""
    dataset = upload_target(client, "digits_fewshot")
    source = next(
        s["id"]
        for s in client.get("/v1/sources?page_size=200").json()["items"]
        if s["name"] == "digits_1100"
    )
    job = client.post(
        "/v1/finetunes",
        json={
            "target_dataset_id": dataset,
            "source_id": source,
            "schedule": "manual",
            "epochs": 1,
        },
    )
    assert job.status_code == 202, job.text
    state = wait_for_job(client, job.json()["id"])
    assert state["status"] == "succeeded", state
    return state["model_id"]


@pytest.mark.system
def test_concurrent_registrations_of_one_model_make_one_source(
    database_url: str | None, make_client: Callable[..., TestClient], data_dir: Path
) -> None:
    # database_url first: its PostgreSQL database must outlive the service and its worker.
    client = make_client(database_url=database_url, start_worker=True)
    model_id = fine_tuned_model(client)
    ids_before, _ = zoo_state(client, data_dir)
    start = threading.Barrier(8)
    responses: dict[int, httpx.Response] = {}

    def post(i: int) -> None:
        start.wait()
        responses[i] = client.post(f"/v1/models/{model_id}/register", json={"name": f"ft-{i}"})

    threads = [threading.Thread(target=post, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    statuses = sorted(r.status_code for r in responses.values())
    assert statuses == [201] + [409] * 7, [r.text for r in responses.values()]
    winner = next(r.json()["id"] for r in responses.values() if r.status_code == 201)
    for loser in (r for r in responses.values() if r.status_code == 409):
        assert winner in loser.json()["detail"] and loser.json()["source_id"] == winner
    ids_after, files_after = zoo_state(client, data_dir)
    assert sorted(ids_after) == sorted([*ids_before, winner])
    # The losers' published files were removed again.
    assert {p.parent.name for p in files_after} == set(ids_after)
    assert client.get(f"/v1/models/{model_id}").json()["registered_source_id"] == winner
    engine = create_engine(client.app.state.service.settings.sqlalchemy_url)
    with engine.connect() as connection:
        rows = connection.scalar(
            select(func.count()).select_from(Source).where(Source.model_id == model_id)
        )
    engine.dispose()
    assert rows == 1
    # Still one source later, sequentially too.
    again = client.post(f"/v1/models/{model_id}/register", json={})
    assert again.status_code == 409 and again.json()["source_id"] == winner
