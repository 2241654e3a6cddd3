"""Learning from finished jobs: evidence from real fine-tunes, refits, and the calibration
each later ranking records."""

from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.config import Settings
from app.main import create_app
from app.models import Evidence
from app.p2l.calibration import (
    RankingParams,
    TargetEvidence,
    fit,
    grid,
    guarded_fit,
    leave_one_target_out,
    regret_table,
)
from app.p2l.scoring import ScoringParams
from app.p2l.signature import DatasetSignature
from app.services.calibration import Constants
from app.services.sources import signature_for_dataset
from tests.helpers import (
    PROBLEM,
    eventually,
    rank,
    start_job,
    upload_target,
    wait_for_job,
)

_SETTINGS = Settings(_env_file=None)
DEFAULTS = {"measure": _SETTINGS.p2l_measure, "lambda": _SETTINGS.p2l_lambda}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A service with its worker that refits by itself once three targets are usable."""
    settings = Settings(
        _env_file=None, data_dir=tmp_path_factory.mktemp("calibration") / "data",
        start_worker=True, calibration_auto_refit_targets=3,
    )  # fmt: skip
    client = TestClient(create_app(settings), raise_server_exceptions=False)
    with client:
        yield client


def pair_only_a_refit_flips(service: TestClient, targets: list[str]) -> tuple[str, str]:
    """Sources (a, b) that the bundled defaults rank a-before-b on every target, while the
    first parameters of the refit's grid that put b first on any one target put b first on
    all of them: evidence that b transfers better then makes a refit switch (it must win
    leave one target out)."""
    state = service.app.state.service
    with state.sessions() as session:
        signatures = [
            signature_for_dataset(session, state.store, state.reference, t) for t in targets
        ]
    constants = Constants.from_settings(state.settings)
    candidates = grid(constants.defaults)

    def b_first(params: RankingParams, a: str, b: str) -> list[bool]:
        scoring = ScoringParams(params.lam, constants.eps, constants.emd_gamma)
        return [
            state.index.rank(s, "p2l", params.measure, scoring, source_ids=[a, b])[0].source_id == b
            for s in signatures
        ]

    ids = [s["id"] for s in service.get("/v1/sources?page_size=200").json()["items"]]
    for a in ids:
        for b in ids:
            if a == b or any(b_first(candidates[0], a, b)):
                continue
            flips = [b_first(c, a, b) for c in candidates[1:]]
            firsts = [next((f for f in flips if f[t]), None) for t in range(len(targets))]
            if all(first is not None and all(first) for first in firsts):
                return a, b
    pytest.fail("no pair of sources that a refit could reorder on every target")


def fine_tune_pair(service: TestClient, target: str, a: str, b: str) -> tuple[dict, dict]:
    """Real jobs on the target: a trained barely (head only, one epoch, a tiny rate), b
    properly (with the from-scratch baseline); both must succeed, b must do better."""
    weak = start_job(
        service, target_dataset_id=target, source_id=a, schedule="manual", epochs=1,
        base_lr=1e-4, freeze_below=4,
    )  # fmt: skip
    strong = start_job(
        service, target_dataset_id=target, source_id=b, schedule="manual", epochs=10,
        baseline=True,
    )  # fmt: skip
    done = [wait_for_job(service, job["id"]) for job in (weak, strong)]
    assert [job["status"] for job in done] == ["succeeded", "succeeded"], done
    assert done[0]["result"]["test_accuracy"] < done[1]["result"]["test_accuracy"]
    return done[0], done[1]


@pytest.mark.system
def test_evidence_from_finished_jobs_refits_the_ranking_and_later_rankings_record_it(
    service: TestClient,
) -> None:
    status = service.get("/v1/calibration").json()
    assert status["calibration_id"] is None and status["params"]["refine"] is None
    assert {k: status["params"][k] for k in DEFAULTS} == DEFAULTS
    assert status["evidence"] == {"fine_tunes": 0, "targets": 0, "usable_targets": 0}
    refused = service.post("/v1/calibration/refit")
    assert refused.status_code == 409 and refused.headers["content-type"] == PROBLEM
    assert "nothing to refit on" in refused.json()["detail"]

    targets = [upload_target(service, name) for name in ("digits_fewshot", "fashion_fewshot")]
    a, b = pair_only_a_refit_flips(service, targets)
    before = rank(service, targets[0], source_ids=[a, b])
    assert before["calibration_id"] is None and before["params"]["lambda"] == DEFAULTS["lambda"]
    assert [r["source_id"] for r in before["results"]] == [a, b]
    weak, strong = fine_tune_pair(service, targets[0], a, b)

    # Each finished job left its evidence: source, accuracy, schedule, baseline.
    with service.app.state.service.sessions() as session:
        rows = {e.job_id: e for e in session.scalars(select(Evidence))}
    assert set(rows) == {weak["id"], strong["id"]}
    assert rows[weak["id"]].source_id == a and rows[strong["id"]].source_id == b
    assert rows[strong["id"]].accuracy == strong["result"]["test_accuracy"]
    assert rows[strong["id"]].accuracy_split == "test"
    assert rows[strong["id"]].schedule == strong["result"]["schedule"]
    assert rows[strong["id"]].baseline_accuracy == strong["result"]["baseline"]["test_accuracy"]
    assert rows[weak["id"]].baseline_accuracy is None
    # The listing shows the same rows, newest first, page by page, without the signatures.
    first = service.get("/v1/calibration/evidence", params={"page_size": 1}).json()
    token = first["next_page_token"]
    second = service.get("/v1/calibration/evidence", params={"page_token": token}).json()
    listed = first["items"] + second["items"]
    assert second["next_page_token"] is None and [e["job_id"] for e in listed] == [
        strong["id"], weak["id"],
    ]  # fmt: skip
    assert listed[0]["accuracy"] == strong["result"]["test_accuracy"]
    assert listed[0]["accuracy_split"] == "test" and listed[0]["source_id"] == b
    assert listed[0]["baseline_accuracy"] == strong["result"]["baseline"]["test_accuracy"]
    assert "target_signature" not in listed[0]

    # One usable target: the evidence shows the defaults' regret, but one target cannot
    # show that a refit generalises, so a refit keeps the parameters in force.
    gap = strong["result"]["test_accuracy"] - weak["result"]["test_accuracy"]
    status = service.get("/v1/calibration").json()
    assert status["evidence"] == {"fine_tunes": 2, "targets": 1, "usable_targets": 1}
    assert status["regret"]["current"] == pytest.approx(gap)
    assert status["regret"]["bundled_defaults"] == pytest.approx(gap)
    assert status["regret"]["refit_in_sample"] == 0
    assert "a refit keeps them" in status["regret"]["decision"]
    kept = service.post("/v1/calibration/refit").json()
    assert {k: kept["params"][k] for k in DEFAULTS} == DEFAULTS and kept["trigger"] == "refit"

    # A second target with the same story: refitting now wins leave one target out.
    fine_tune_pair(service, targets[1], a, b)
    status = service.get("/v1/calibration").json()
    assert status["evidence"] == {"fine_tunes": 4, "targets": 2, "usable_targets": 2}
    assert status["regret"]["refit_leave_one_target_out"] == 0
    assert "a refit switches" in status["regret"]["decision"]
    refit = service.post("/v1/calibration/refit")
    assert refit.status_code == 201, refit.text
    calibration = refit.json()
    assert calibration["calibration_id"] not in (None, kept["calibration_id"])
    params = {k: calibration["params"][k] for k in DEFAULTS}
    assert params != DEFAULTS and calibration["regret"]["current"] == 0
    assert calibration["fitted_on"]["targets"] == 2
    assert service.get("/v1/calibration").json()["calibration_id"] == calibration["calibration_id"]

    # Later rankings use the refitted measure and lambda, and say so; a request that sets
    # both itself owes the calibration nothing.
    for target in targets:
        after = rank(service, target, source_ids=[a, b])
        assert after["calibration_id"] == calibration["calibration_id"]
        assert after["measure"] == params["measure"]
        assert after["params"]["lambda"] == params["lambda"]
        assert [r["source_id"] for r in after["results"]] == [b, a]
        stored = service.get(f"/v1/rankings/{after['id']}").json()
        assert stored["calibration_id"] == calibration["calibration_id"]
    own = rank(
        service, targets[0], source_ids=[a, b],
        measure=DEFAULTS["measure"], **{"lambda": DEFAULTS["lambda"]},
    )  # fmt: skip
    assert own["calibration_id"] is None and own["results"][0]["source_id"] == a
    # The baselines use neither the calibration's measure nor its lambda.
    for method in ("distance", "largest"):
        baseline = rank(service, targets[0], method=method)
        assert baseline["calibration_id"] is None
        assert baseline["measure"] == DEFAULTS["measure"]

    # A third usable target: the worker refits by itself (P2L_CALIBRATION_AUTO_REFIT_TARGETS=3).
    third = upload_target(service, "wesnoth_terrain_fewshot")
    for source in (a, b):
        quick = start_job(
            service, target_dataset_id=third, source_id=source, schedule="manual", epochs=1
        )
        assert wait_for_job(service, quick["id"], ("succeeded", "failed"))["status"] == "succeeded"
    # The worker refits just after the job's commit.
    status = eventually(
        lambda: (c := service.get("/v1/calibration").json())["trigger"] == "auto" and c,
        what="the worker refits",
    )
    assert status["fitted_on"]["targets"] == 3
    assert status["evidence"] == {"fine_tunes": 6, "targets": 3, "usable_targets": 3}

    # A reset puts the bundled defaults back; rankings record it; the evidence stays.
    reset = service.post("/v1/calibration/reset")
    assert reset.status_code == 201, reset.text
    back = reset.json()
    assert back["trigger"] == "reset" and {k: back["params"][k] for k in DEFAULTS} == DEFAULTS
    assert back["evidence"]["fine_tunes"] == 6
    again = rank(service, targets[0], source_ids=[a, b])
    assert again["calibration_id"] == back["calibration_id"]
    assert [r["source_id"] for r in again["results"]] == [a, b]


@pytest.mark.unit
def test_leave_one_target_out_scores_each_target_under_the_others_fit() -> None:
    # Three targets, three candidate parameter sets (column 0: those in force).
    table = np.array([[0.1, 0.0, 0.2], [0.1, 0.0, 0.2], [0.0, 0.15, 0.0]])
    assert fit(table) == 1  # mean regrets 0.067, 0.05, 0.133
    # Without target 0 the means are 0.05, 0.075, 0.1: the parameters in force stay.
    assert fit(table, np.array([1, 2])) == 0
    assert fit(table, np.array([0, 1])) == 1
    assert fit(np.array([[0.1, 0.0, 0.0]])) == 1  # a tie goes to the first listed
    assert fit(np.zeros((0, 3))) == 0  # no evidence: keep the parameters in force
    # Targets 0 and 1 under column 0 (fitted without them), target 2 under column 1.
    assert leave_one_target_out(table) == pytest.approx((0.1 + 0.1 + 0.15) / 3)
    assert leave_one_target_out(np.zeros((0, 3))) is None
    # A refit switches only when refitting wins leave one target out: not here (0.117 is
    # worse than the 0.067 of the parameters in force), nor on a single target; yes when
    # every target agrees.
    assert guarded_fit(table) == 0
    assert guarded_fit(np.array([[0.1, 0.0, 0.2]])) == 0
    assert guarded_fit(np.array([[0.1, 0.0, 0.2], [0.2, 0.0, 0.0]])) == 1


@pytest.mark.unit
def test_the_refit_weighs_a_claimed_count_as_rankings_do() -> None:
    """A refit scores candidates with the cap on claimed counts that rankings apply, so it
    is not fitted on a size term no ranking uses."""
    rng = np.random.default_rng(0)

    def signature(mean: np.ndarray, images: int) -> DatasetSignature:
        return DatasetSignature(
            class_names=["a", "b"],
            class_counts=np.array([images // 2, images - images // 2]),
            mean=mean.astype(np.float32),
            class_means=np.stack([mean, mean]).astype(np.float32),
            variance=np.ones_like(mean, dtype=np.float32),
            reference_sha256="r" * 64,
        )

    target = rng.random(16)
    near = signature(target + 0.01, 100)  # close to the target, small
    far = signature(rng.random(16), 10**9)  # far from it, claiming a billion images
    evidence = [TargetEvidence(signature(target, 50), {"near": 0.9, "far": 0.5})]
    sources = {"near": near, "far": far}
    heavy = [RankingParams("js", 0.05)]  # a lambda large enough for a billion to win
    uncapped = regret_table(evidence, sources, heavy, 1e-3, 0.01)
    capped = regret_table(evidence, sources, heavy, 1e-3, 0.01, {"far"}, 100)
    assert uncapped[0, 0] == pytest.approx(0.4)  # the claim picked "far"
    assert capped[0, 0] == 0.0  # capped, it picks "near", the better one
