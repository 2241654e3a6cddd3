"""Two-stage rankings: P2L over the zoo, then LogME, LEEP, NCE or k-NN over its shortlist."""

from collections.abc import Callable

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app.families import get_spec, load_model
from app.p2l.peers import knn_accuracy, leep, logme
from app.p2l.refine import source_outputs
from app.zoo.bundled import BUNDLED_DIR, bundled_target, manifest
from tests.helpers import (
    PROBLEM,
    rank,
    upload_target,
)


@pytest.fixture
def service(make_client: Callable[..., TestClient], database_url: str | None) -> TestClient:
    """The service with its bundled zoo, on each storage backend."""
    return make_client(database_url=database_url)


def bundled_scores(source_name: str, target_name: str) -> tuple[float, float, float]:
    """LogME, LEEP and k-NN of a bundled source on a bundled target's training part, directly."""
    entry = next(e for e in manifest()["sources"] if e["name"] == source_name)
    model = load_model(entry["architecture"], entry["num_classes"], BUNDLED_DIR / entry["weights"])
    spec = get_spec(entry["architecture"])
    images, labels, _, is_test = bundled_target(target_name)
    features, probabilities = source_outputs(
        model, images[~is_test], spec.mean, spec.std, torch.device("cpu")
    )
    train = labels[~is_test]
    return logme(features, train), leep(probabilities, train), knn_accuracy(features, train)


@pytest.mark.system
def test_the_shortlist_is_reranked_by_the_measure_and_the_rest_keeps_its_order(
    service: TestClient,
) -> None:
    target = upload_target(service, "digits_fewshot")
    first = rank(service, target, top_k=6)
    body = rank(service, target, top_k=6, refine={"method": "logme", "top": 4})
    results = body["results"]
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5, 6]
    # The shortlist is the first stage's top 4, in the measure's order, each with its
    # first-stage rank; below it, the first stage's order, untouched.
    shortlist = results[:4]
    assert {r["source_id"] for r in shortlist} == {r["source_id"] for r in first["results"][:4]}
    assert [r["refine_score"] for r in shortlist] == sorted(
        (r["refine_score"] for r in shortlist), reverse=True
    )
    assert sorted(r["first_stage_rank"] for r in shortlist) == [1, 2, 3, 4]
    assert [r["source_id"] for r in results[4:]] == [r["source_id"] for r in first["results"][4:]]
    assert all(r["refine_score"] is None for r in results[4:])
    assert body["refine"]["method"] == "logme" and body["refine"]["forward_passes"] == 4
    assert body["refine"]["images_per_pass"] == 50 and body["refine"]["seconds"] > 0
    assert first["refine"] is None
    # The score is LogME of the source's own features on the target's images.
    best = shortlist[0]
    assert best["refine_score"] == pytest.approx(
        bundled_scores(best["name"], "digits_fewshot")[0], rel=1e-4
    )
    assert service.get(f"/v1/rankings/{body['id']}").json() == {**body, "elapsed_ms": None}


@pytest.mark.api
def test_leep_reads_the_source_head(service: TestClient) -> None:
    target = upload_target(service, "digits_fewshot")
    body = rank(service, target, refine={"method": "leep", "top": 2})
    assert len(body["results"]) == len(service.get("/v1/sources?page_size=200").json()["items"])
    top = body["results"][0]
    assert top["refine_score"] == pytest.approx(
        bundled_scores(top["name"], "digits_fewshot")[1], rel=1e-4
    )
    assert np.isfinite(top["refine_score"]) and top["refine_score"] <= 0


@pytest.mark.api
def test_knn_reads_the_source_features(service: TestClient) -> None:
    target = upload_target(service, "digits_fewshot")
    body = rank(service, target, top_k=4, refine={"method": "knn", "top": 2})
    assert body["refine"]["method"] == "knn" and body["refine"]["forward_passes"] == 2
    shortlist = body["results"][:2]
    assert all(0 <= r["refine_score"] <= 1 for r in shortlist)
    assert all(r["refine_score"] is None for r in body["results"][2:])
    top = shortlist[0]
    assert top["refine_score"] == pytest.approx(bundled_scores(top["name"], "digits_fewshot")[2])
    assert service.get(f"/v1/rankings/{body['id']}").json()["refine"]["method"] == "knn"


@pytest.mark.api
@pytest.mark.parametrize(
    ("refine", "detail"),
    [({"method": "magic", "top": 3}, "method"), ({"method": "logme", "top": 0}, "top"),
     ({"method": "logme", "top": 21}, "top"), ({"method": "nce", "k": 3}, "k")],
)  # fmt: skip
def test_a_bad_refine_is_refused(service: TestClient, refine: dict, detail: str) -> None:
    target = upload_target(service, "digits_fewshot")
    response = service.post("/v1/rankings", json={"target_dataset_id": target, "refine": refine})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    assert detail in response.json()["detail"]


@pytest.mark.api
def test_top_k_below_the_shortlist_and_a_shortlist_longer_than_the_zoo(client: TestClient) -> None:
    target = upload_target(client, "digits_fewshot")
    first = rank(client, target, top_k=4)["results"]
    short = rank(client, target, top_k=2, refine={"method": "logme", "top": 4})
    # The whole shortlist of 4 is scored; the answer keeps the best 2 of it.
    assert short["refine"]["top"] == 4 and len(short["results"]) == 2
    assert {r["source_id"] for r in short["results"]} <= {r["source_id"] for r in first}
    assert all(r["refine_score"] is not None for r in short["results"])
    two = [r["source_id"] for r in first[:2]]
    subset = rank(client, target, source_ids=two, refine={"method": "nce"})
    assert subset["refine"]["top"] == 2 == subset["refine"]["forward_passes"]
    assert {r["source_id"] for r in subset["results"]} == set(two)
