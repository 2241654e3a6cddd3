"""Method "learned" (#27): rankings learned from past fine-tunes, with coverage and the
expected gain over scratch; real fine-tunes fill the evidence, a refit brings them in."""

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file

from app.config import Settings
from app.families import build_model
from app.p2l.reference import ReferenceNetwork, load_reference
from app.services import learning
from app.store import LocalArtifactStore
from app.zoo.bundled import load_active_reference
from tests.archives import png_bytes
from tests.helpers import (
    get_job,
    rank,
    run_queued_jobs,
    start_job,
    upload_dataset,
    upload_garments,
)

pytestmark = pytest.mark.api


def scores(ranking: dict) -> dict[str, float]:
    """Each ranked source's score, by id."""
    return {r["source_id"]: r["score"] for r in ranking["results"]}


def test_every_ranking_says_how_well_the_zoo_covers_the_target(client: TestClient) -> None:
    garments = upload_garments(client)
    ranking = rank(client, garments)
    coverage = ranking["coverage"]
    assert coverage["past_targets"] >= 5  # the bundled benchmark's targets
    assert coverage["nearest_source_id"] in scores(ranking)
    assert 0.0 <= coverage["percentile"] <= 1.0
    assert coverage["covered"] is True  # Fashion-MNIST: the zoo has garment sources
    assert coverage["recommendation"] is None
    for result in ranking["results"][:3]:
        gain = result["gain"]
        assert gain["low"] <= gain["expected"] <= gain["high"]
    assert all("gain" not in r or r["gain"] is None for r in ranking["results"][3:])
    # Stored with the ranking: re-read, it says the same.
    again = client.get(f"/v1/rankings/{ranking['id']}").json()
    assert again["coverage"] == coverage and again["results"] == ranking["results"]


def test_below_its_minimum_of_evidence_learned_says_it_kept_p2l(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(learned_min_targets=10_000)
    garments = upload_garments(client)
    learned = rank(client, garments, method="learned")
    p2l = rank(client, garments)
    assert learned["method"] == "learned"
    assert learned["learned"]["used"] is False
    assert "fewer than the 10000" in learned["learned"]["fallback"]
    assert [r["source_id"] for r in learned["results"]] == [r["source_id"] for r in p2l["results"]]


def test_finished_jobs_and_a_refit_change_the_learned_ranking(client: TestClient) -> None:
    garments = upload_garments(client)
    before = rank(client, garments, method="learned")
    learned = before["learned"]
    assert learned["used"] is True and learned["jobs"] == 0 and learned["calibration_id"] is None
    assert learned["targets"] == learned["bundled_targets"] >= 5
    assert all(r["p2l_rank"] >= 1 for r in before["results"])

    # The learned top is barely trained, a source it ranks in the middle trained properly:
    # the evidence says the middle one transfers better here.
    results = before["results"]
    top, low = results[0]["source_id"], results[len(results) // 2]["source_id"]
    weak = start_job(client, target_dataset_id=garments, source_id=top, schedule="manual",
                     epochs=1, base_lr=1e-7, freeze_below=4)  # fmt: skip
    strong = start_job(client, target_dataset_id=garments, source_id=low, schedule="manual",
                       epochs=12, baseline=True)  # fmt: skip
    run_queued_jobs(client)
    done = [get_job(client, job["id"]) for job in (weak, strong)]
    assert [job["status"] for job in done] == ["succeeded", "succeeded"], done
    assert done[0]["result"]["test_accuracy"] < done[1]["result"]["test_accuracy"]

    # Not before a refit: the evidence counts up to the calibration in force.
    unchanged = rank(client, garments, method="learned")
    assert unchanged["learned"]["jobs"] == 0 and scores(unchanged) == scores(before)

    refit = client.post("/v1/calibration/refit")
    assert refit.status_code == 201, refit.text
    after = rank(client, garments, method="learned")
    assert after["learned"]["jobs"] == 2
    assert after["learned"]["targets"] == learned["targets"] + 1
    assert after["learned"]["calibration_id"] == refit.json()["calibration_id"]
    # What the jobs showed changed the learned scores (and only a refit let it in).
    assert scores(after)[low] - scores(after)[top] != scores(before)[low] - scores(before)[top]
    assert scores(after) != scores(before)


def noise_images(per_class: int, seed: int) -> dict[str, list[bytes]]:
    """Two classes of coloured noise: images like no source's training data."""
    rng = np.random.default_rng(seed)
    return {
        label: [
            png_bytes(Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)))
            for _ in range(per_class)
        ]
        for label in ("speckle", "static")
    }


def test_best_turns_the_baseline_on_where_the_zoo_does_not_cover_the_target(
    client: TestClient,
) -> None:
    noise = upload_dataset(client, noise_images(12, seed=0), "noise.zip")
    coverage = rank(client, noise)["coverage"]
    assert coverage["covered"] is False, coverage
    assert "baseline" in coverage["recommendation"]
    job = start_job(client, target_dataset_id=noise, source_id="best", schedule="manual",
                    epochs=1)  # fmt: skip
    assert get_job(client, job["id"])["params"]["options"]["baseline"] is True
    # Asked for explicitly, or on a covered target, it is as given / off.
    kept = start_job(client, target_dataset_id=noise, source_id="best", schedule="manual",
                     epochs=1, baseline=False)  # fmt: skip
    assert get_job(client, kept["id"])["params"]["options"]["baseline"] is False
    garments = upload_garments(client)
    covered = start_job(client, target_dataset_id=garments, source_id="best",
                        schedule="manual", epochs=1)  # fmt: skip
    assert get_job(client, covered["id"])["params"]["options"]["baseline"] is False


def test_learned_takes_a_second_stage_and_a_subset_of_the_zoo(client: TestClient) -> None:
    garments = upload_garments(client)
    refined = rank(client, garments, method="learned", refine={"method": "knn", "top": 2})
    assert refined["learned"]["used"] is True and refined["refine"]["method"] == "knn"
    assert all(r["p2l_rank"] >= 1 for r in refined["results"])
    assert all(0 <= r["refine_score"] <= 1 for r in refined["results"][:2])
    one = refined["results"][0]["source_id"]
    alone = rank(client, garments, method="learned", source_ids=[one], top_k=1)
    assert [r["source_id"] for r in alone["results"]] == [one]
    assert alone["coverage"]["nearest_source_id"] == one
    # A subset is scored as in the whole zoo: each source keeps its learned score.
    whole = scores(rank(client, garments, method="learned"))
    some = list(whole)[2:7]
    subset = scores(rank(client, garments, method="learned", source_ids=some))
    assert subset == pytest.approx({s: whole[s] for s in some})


@pytest.fixture
def bundled_reference() -> ReferenceNetwork:
    return load_active_reference(Settings(_env_file=None))


def test_a_fresh_install_reads_the_shipped_signatures_at_once(
    bundled_reference: ReferenceNetwork, tmp_path: Path
) -> None:
    """The bundled targets' signatures under the bundled reference ship with the service
    (and match its evidence file): nothing is signed at start-up, nothing waits."""
    shipped = learning._read_signatures(learning.BUNDLED_SIGNATURES, bundled_reference)
    assert shipped is not None
    expected = json.loads(learning.BUNDLED_EVIDENCE.read_text())["targets"]
    assert [entry["name"] for entry, _ in shipped] == [e["name"] for e in expected]
    store = LocalArtifactStore(tmp_path / "data")
    signed, pending = learning.signed_bundled(bundled_reference, store, wait_seconds=0)
    assert pending is None and len(signed) == len(expected)
    assert store.keys_under(learning.CACHE_PREFIX) == set()  # read, not signed and stored


@pytest.fixture
def unsigned(
    bundled_reference: ReferenceNetwork, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ReferenceNetwork]:
    """The bundled reference network, as a fresh process sees it where the shipped
    signatures are missing: nothing signed yet."""
    reference = bundled_reference
    monkeypatch.setattr(learning, "BUNDLED_SIGNATURES", tmp_path / "not-shipped.safetensors")
    kept = learning._signings.pop(reference.weights_sha256, None)
    yield reference
    learning._signings.pop(reference.weights_sha256, None)
    if kept is not None:
        learning._signings[reference.weights_sha256] = kept


def test_the_bundled_targets_are_signed_in_the_background_once_and_kept(
    unsigned: ReferenceNetwork, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (CI of stop 33): the first ranking under a new reference network signed
    the bundled benchmark's targets inside the request; under a ResNet-18 on CPU that took
    past the client's 120 s timeout. They are signed in the background and kept."""
    store = LocalArtifactStore(tmp_path / "data")
    started = time.perf_counter()
    signed, pending = learning.signed_bundled(unsigned, store, wait_seconds=0)
    assert time.perf_counter() - started < 1.0
    assert signed == [] and pending is not None and "still being signed" in pending

    signed, pending = learning.signed_bundled(unsigned, store, wait_seconds=300)
    assert pending is None
    expected = json.loads(learning.BUNDLED_EVIDENCE.read_text())["targets"]
    assert [entry["name"] for entry, _ in signed] == [e["name"] for e in expected]
    assert {s.reference_sha256 for _, s in signed} == {unsigned.weights_sha256}

    # The next process reads them from the store instead of signing them again.
    (kept,) = store.keys_under(learning.CACHE_PREFIX)
    learning._signings.pop(unsigned.weights_sha256)
    sign = learning._sign_bundled
    monkeypatch.setattr(learning, "_sign_bundled", lambda reference: 1 / 0)
    read, pending = learning.signed_bundled(unsigned, store, wait_seconds=300)
    assert pending is None
    for (_, signature), (_, again) in zip(signed, read, strict=True):
        assert again.class_names == signature.class_names
        assert np.array_equal(again.class_means, signature.class_means)
        assert np.array_equal(again.variance, signature.variance)

    # A torn copy is signed afresh and rewritten; a failure is said, not raised.
    store.write_file(kept, b"torn")
    learning._signings.pop(unsigned.weights_sha256)
    signed, pending = learning.signed_bundled(unsigned, store, wait_seconds=300)
    assert signed == [] and pending is not None and "ZeroDivisionError" in pending
    monkeypatch.setattr(learning, "_sign_bundled", sign)
    learning._signings.pop(unsigned.weights_sha256)
    signed, pending = learning.signed_bundled(unsigned, store, wait_seconds=300)
    assert pending is None and len(signed) == len(expected)
    assert store.path(kept).read_bytes() != b"torn"


def test_under_another_reference_network_there_is_nothing_to_sign(tmp_path: Path) -> None:
    """The bundled sources are signed under the bundled reference only: under another one
    their records cannot be used, so no CPU goes into signing the targets."""
    torch.manual_seed(7)
    weights = tmp_path / "reference.safetensors"
    save_file(build_model("compact_cnn", num_classes=1).state_dict(), weights)
    reference = load_reference("compact_cnn", weights)
    store = LocalArtifactStore(tmp_path / "data")
    assert learning.signed_bundled(reference, store, wait_seconds=300) == ([], None)
    assert store.keys_under(learning.CACHE_PREFIX) == set()
