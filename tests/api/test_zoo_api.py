"""The source zoo and rankings through HTTP, on the bundled reference network and zoo."""

import itertools
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from safetensors.torch import save

from app.config import Settings
from app.families import build_model
from app.models import JobStatus
from app.p2l.learned import LearnedConfig
from app.zoo.bundled import BUNDLED_DIR, manifest
from tests.helpers import (
    PROBLEM,
    rank,
    upload_target,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def service(make_client: Callable[..., TestClient], database_url: str | None) -> TestClient:
    """The service with its bundled zoo, on each storage backend."""
    return make_client(database_url=database_url)


def zoo(client: TestClient) -> dict[str, dict]:
    return {s["name"]: s for s in client.get("/v1/sources?page_size=200").json()["items"]}


def source_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "sources").rglob("*") if p.is_file())


@pytest.mark.api
def test_fresh_start_lists_the_bundled_zoo(client: TestClient) -> None:
    sources = zoo(client)
    assert len(sources) >= 10
    assert {s["origin"] for s in sources.values()} == {"bundled"}
    sizes = [s["num_images"] for s in sources.values()]
    assert max(sizes) >= 10 * min(sizes)
    reference = client.get("/v1/reference").json()
    assert reference["weights_source"].startswith("file:")
    assert reference["weights_sha256"] == manifest()["reference"]["weights_sha256"]
    assert all(s["reference_sha256"] == reference["weights_sha256"] for s in sources.values())


@pytest.mark.api
def test_bundled_import_can_be_turned_off(make_client: Callable[..., TestClient]) -> None:
    client = make_client(import_bundled_zoo=False)
    assert client.get("/v1/sources").json()["items"] == []


@pytest.mark.api
def test_p2l_ranks_related_sources_first_and_differs_from_largest(service: TestClient) -> None:
    # Ground truth (bench/results/selection.md): garments are best served by a garment source,
    # glyphs of scripts no source saw by a glyph source.
    garments = upload_target(service, "fashion")
    scripts = upload_target(service, "unseen_scripts")
    biggest = max(zoo(service).values(), key=lambda s: s["num_images"])["name"]

    by_p2l = [r["name"] for r in rank(service, garments)["results"]]
    assert by_p2l[0].startswith("fashion")
    scripts_p2l = [r["name"] for r in rank(service, scripts)["results"]]
    assert set(scripts_p2l[:2]) <= {"scripts_9k", "letters_4400", "scripts_280"}

    for target in (garments, scripts):
        largest = rank(service, target, method="largest")["results"]
        assert largest[0]["name"] == biggest
    assert [r["name"] for r in rank(service, scripts, method="largest")["results"]] != scripts_p2l


@pytest.mark.api
def test_ranking_reports_the_parts_of_every_score(service: TestClient) -> None:
    target = upload_target(service, "digits_fewshot")
    body = rank(service, target, measure="kl", top_k=4, **{"lambda": 0.2})
    assert body["method"] == "p2l" and body["measure"] == "kl"
    assert body["params"]["lambda"] == 0.2
    assert [r["rank"] for r in body["results"]] == [1, 2, 3, 4]
    for row in body["results"]:
        assert row["score"] == pytest.approx(-row["distance"] + row["size_term"], abs=1e-6)
        assert row["size_term"] == pytest.approx(0.2 * math.log(row["num_images"]))
        assert 0 < row["similarity"] <= 1
    again = service.get(f"/v1/rankings/{body['id']}").json()
    assert again["results"] == body["results"]


@pytest.mark.api
@pytest.mark.parametrize("measure", ["js", "cosine", "emd"])
def test_every_measure_ranks_the_whole_zoo(client: TestClient, measure: str) -> None:
    target = upload_target(client, "unseen_scripts")
    results = rank(client, target, measure=measure, method="distance")["results"]
    assert len(results) == len(zoo(client))
    assert all(a["score"] >= b["score"] for a, b in itertools.pairwise(results))


@pytest.mark.api
def test_ranking_a_subset_and_bad_requests(client: TestClient) -> None:
    target = upload_target(client, "fashion")
    sources = zoo(client)
    chosen = [sources["digits_1100"]["id"], sources["clipart_food_160"]["id"]]
    subset = rank(client, target, source_ids=chosen)["results"]
    assert {r["source_id"] for r in subset} == set(chosen)

    cases = [
        ({"target_dataset_id": "nope"}, 404, "no dataset"),
        ({"target_dataset_id": target, "source_ids": ["nope"]}, 422, "unknown sources"),
        ({"target_dataset_id": target, "method": "magic"}, 422, "method"),
        ({"target_dataset_id": target, "top_k": 0}, 422, "top_k"),
    ]
    for body, status, detail in cases:
        response = client.post("/v1/rankings", json=body)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == PROBLEM
        assert detail in response.json()["detail"]
    assert client.get("/v1/rankings/nope").status_code == 404


@pytest.mark.api
def test_register_download_and_delete_a_source(service: TestClient, data_dir: Path) -> None:
    dataset = upload_target(service, "fashion")
    weights = (BUNDLED_DIR / "sources" / "fashion_9k.safetensors").read_bytes()
    response = service.post(
        "/v1/sources",
        files={"weights": ("w.safetensors", weights)},
        data={
            "architecture": "compact_cnn",
            "num_classes": "10",
            "name": "my-garments",
            "dataset_id": dataset,
        },
    )
    assert response.status_code == 201, response.text
    source = response.json()
    assert response.headers["location"] == f"/v1/sources/{source['id']}"
    assert source["num_images"] == 250 and source["origin"] == "upload"
    assert source["class_names"] == [f"class_{i}" for i in range(10)]
    assert source["dataset_id"] == dataset
    assert service.get(f"/v1/sources/{source['id']}/weights").content == weights
    target = upload_target(service, "fashion")
    assert source["id"] in {r["source_id"] for r in rank(service, target)["results"]}

    assert service.delete(f"/v1/sources/{source['id']}").status_code == 204
    assert service.get(f"/v1/sources/{source['id']}").status_code == 404
    assert source["id"] not in {r["source_id"] for r in rank(service, target)["results"]}
    assert not (data_dir / "sources" / source["id"]).exists()


@pytest.mark.api
def test_register_with_an_uploaded_signature(client: TestClient) -> None:
    dataset = upload_target(client, "digits_fewshot")
    signature = client.get(f"/v1/datasets/{dataset}/signature", params={"format": "safetensors"})
    assert signature.status_code == 200
    weights = save(build_model("compact_cnn_small", 5).state_dict())
    response = client.post(
        "/v1/sources",
        files={"weights": ("w.safetensors", weights), "signature": ("s", signature.content)},
        data={
            "architecture": "compact_cnn_small",
            "num_classes": "5",
            "name": "digits-5",
            "class_names": json.dumps(["1", "3", "4", "5", "6"]),
        },
    )
    assert response.status_code == 201, response.text
    # The counts describe the training data (the signature's classes), the names the model.
    assert response.json()["class_counts"] == {c: 10 for c in ["0", "1", "2", "3", "4"]}
    assert response.json()["class_names"] == ["1", "3", "4", "5", "6"]


@pytest.mark.api
@pytest.mark.parametrize(
    ("architecture", "num_classes", "weights", "detail"),
    [
        ("compact_cnn_small", 10, "fashion_9k", "stem.0.weight"),
        ("compact_cnn", 7, "fashion_9k", "head.weight"),
        ("compact_cnn", 10, b"not safetensors", "not a readable safetensors"),
        ("vgg_unknown", 10, "fashion_9k", "unknown architecture"),
    ],
)
def test_weights_that_do_not_fit_are_refused_and_nothing_is_kept(
    service: TestClient,
    data_dir: Path,
    architecture: str,
    num_classes: int,
    weights: str | bytes,
    detail: str,
) -> None:
    dataset = upload_target(service, "fashion")
    before, files_before = zoo(service), source_files(data_dir)
    data = (
        weights
        if isinstance(weights, bytes)
        else (BUNDLED_DIR / "sources" / f"{weights}.safetensors").read_bytes()
    )
    response = service.post(
        "/v1/sources",
        files={"weights": ("w.safetensors", data)},
        data={
            "architecture": architecture,
            "num_classes": str(num_classes),
            "name": "bad",
            "dataset_id": dataset,
        },
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    assert detail in response.json()["detail"]
    assert zoo(service) == before
    assert source_files(data_dir) == files_before
    assert list((data_dir / "tmp").iterdir()) == []


@pytest.mark.api
def test_plots_are_pngs(client: TestClient) -> None:
    target = upload_target(client, "clipart_fewshot")
    ranking = rank(client, target)
    plot = client.get(f"/v1/rankings/{ranking['id']}/plot.png")
    assert plot.status_code == 200 and plot.headers["content-type"] == "image/png"
    assert plot.content.startswith(PNG_MAGIC)
    for params in ({}, {"target_dataset_id": target}):
        picture = client.get("/v1/sources/map.png", params=params)
        assert picture.status_code == 200 and picture.content.startswith(PNG_MAGIC)
    assert client.get("/v1/sources/map.png", params={"target_dataset_id": "x"}).status_code == 404


@pytest.mark.api
def test_metrics_count_what_the_service_holds(client: TestClient) -> None:
    upload_target(client, "clipart_fewshot")
    response = client.get("/metrics")
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    # The names are a contract with dashboards; each is a documented gauge.
    assert set(families) == {
        "p2l_datasets", "p2l_sources", "p2l_rankable_sources", "p2l_models", "p2l_jobs",
        "p2l_job_worker_running", "p2l_workers_alive", "p2l_job_workers_busy",
    }  # fmt: skip
    assert all(f.type == "gauge" and f.documentation for f in families.values())
    value = {name: f.samples[0].value for name, f in families.items() if name != "p2l_jobs"}
    assert value["p2l_datasets"] == 1 and value["p2l_models"] == 0
    assert value["p2l_sources"] == value["p2l_rankable_sources"] == len(zoo(client))
    jobs = {s.labels["status"]: s.value for s in families["p2l_jobs"].samples}
    assert jobs == dict.fromkeys(map(str, JobStatus), 0)


@pytest.mark.unit
def test_defaults_are_what_the_selection_benchmark_chose() -> None:
    # The README's calibration section and the service must agree with the committed results.
    results = json.loads((Path(__file__).parents[2] / "bench/results/selection.json").read_text())
    chosen = results["chosen"]["all_targets"]
    settings = Settings(_env_file=None)
    assert (settings.p2l_measure, settings.p2l_lambda) == (chosen["measure"], chosen["lambda"])
    assert manifest()["reference"]["candidate"] == chosen["reference"]
    assert settings.reference_weights is None  # the bundled reference network is the default


@pytest.mark.unit
def test_the_learned_rankers_defaults_are_what_the_benchmark_chose() -> None:
    results = json.loads((Path(__file__).parents[2] / "bench/results/selection.json").read_text())
    chosen, shipped = results["learned"]["chosen_config"], LearnedConfig()
    assert chosen == {
        "model": shipped.model,
        "alpha": shipped.alpha,
        "features": list(shipped.features),
        "record": shipped.record,
        "neighbours": shipped.neighbours,
    }
    assert results["learned"]["coverage"]["quantile_chosen_on_dev"] == shipped.coverage_quantile
