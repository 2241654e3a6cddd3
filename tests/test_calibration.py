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
from app.p2l.calibration import GRID_LAMBDAS, GRID_MEASURES, fit, leave_one_target_out
from tests.test_jobs_api import PROBLEM, start_job, wait
from tests.test_zoo_api import rank, upload_target

DEFAULTS = {"measure": "js", "lambda": 0.002}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A service with its worker that refits by itself once two targets are usable."""
    settings = Settings(
        _env_file=None, data_dir=tmp_path_factory.mktemp("calibration") / "data",
        start_worker=True, calibration_auto_refit_targets=2,
    )  # fmt: skip
    client = TestClient(create_app(settings), raise_server_exceptions=False)
    with client:
        yield client


def disagreeing_pair(service: TestClient, target: str, ranking: dict) -> tuple[str, str]:
    """(a, b): ``ranking`` puts source a first; some measure and lambda of the refit's grid
    put b first instead."""
    first = ranking["results"][0]["source_id"]
    for measure in GRID_MEASURES:
        for lam in GRID_LAMBDAS:
            top = rank(service, target, measure=measure, top_k=1, **{"lambda": lam})
            if top["results"][0]["source_id"] != first:
                return first, top["results"][0]["source_id"]
    pytest.fail("every parameter set of the grid picks the same source")


def fine_tune_pair(service: TestClient, target: str, a: str, b: str) -> tuple[dict, dict]:
    """Real jobs on the target: a trained barely (head only, one epoch, a tiny rate), b
    properly (with the from-scratch baseline); both must succeed."""
    weak = start_job(
        service, target_dataset_id=target, source_id=a, schedule="manual", epochs=1,
        base_lr=1e-4, freeze_below=4,
    )  # fmt: skip
    strong = start_job(
        service, target_dataset_id=target, source_id=b, schedule="manual", epochs=8,
        baseline=True,
    )  # fmt: skip
    done = [
        wait(service, job["id"], ("succeeded", "failed", "cancelled")) for job in (weak, strong)
    ]
    assert [job["status"] for job in done] == ["succeeded", "succeeded"], done
    return done[0], done[1]


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

    digits = upload_target(service, "digits_fewshot")
    before = rank(service, digits)
    assert before["calibration_id"] is None and before["params"]["lambda"] == 0.002
    a, b = disagreeing_pair(service, digits, before)
    weak, strong = fine_tune_pair(service, digits, a, b)
    assert weak["result"]["test_accuracy"] < strong["result"]["test_accuracy"]

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

    gap = strong["result"]["test_accuracy"] - weak["result"]["test_accuracy"]
    status = service.get("/v1/calibration").json()
    assert status["calibration_id"] is None  # one usable target: below the automatic refit
    assert status["evidence"] == {"fine_tunes": 2, "targets": 1, "usable_targets": 1}
    assert status["regret"]["current"] == pytest.approx(gap)
    assert status["regret"]["bundled_defaults"] == pytest.approx(gap)
    assert status["regret"]["refit_in_sample"] == 0

    refit = service.post("/v1/calibration/refit")
    assert refit.status_code == 201, refit.text
    calibration = refit.json()
    assert calibration["calibration_id"] is not None and calibration["trigger"] == "refit"
    params = {k: calibration["params"][k] for k in DEFAULTS}
    assert params != DEFAULTS
    assert calibration["regret"]["current"] == 0
    assert calibration["fitted_on"]["targets"] == 1
    assert service.get("/v1/calibration").json()["calibration_id"] == calibration["calibration_id"]

    # Later rankings use the refitted measure and lambda, and say so; a request that sets
    # both itself owes the calibration nothing.
    after = rank(service, digits)
    assert after["calibration_id"] == calibration["calibration_id"]
    assert after["measure"] == params["measure"] and after["params"]["lambda"] == params["lambda"]
    assert after["results"][0]["source_id"] != a
    own = rank(service, digits, measure="js", **{"lambda": 0.002})
    assert own["calibration_id"] is None and own["results"][0]["source_id"] == a
    assert (
        service.get(f"/v1/rankings/{after['id']}").json()["calibration_id"]
        == (calibration["calibration_id"])
    )

    # A second usable target: the worker refits by itself (P2L_CALIBRATION_AUTO_REFIT_TARGETS=2).
    terrain = upload_target(service, "wesnoth_terrain_fewshot")
    c, d = disagreeing_pair(service, terrain, rank(service, terrain))
    fine_tune_pair(service, terrain, c, d)
    status = service.get("/v1/calibration").json()
    assert status["trigger"] == "auto" and status["calibration_id"] != calibration["calibration_id"]
    assert status["evidence"] == {"fine_tunes": 4, "targets": 2, "usable_targets": 2}
    assert status["fitted_on"]["targets"] == 2
    assert status["regret"]["refit_leave_one_target_out"] is not None


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
