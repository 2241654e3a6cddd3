"""``source_id: "race"``: P2L's shortlist raced by successive halving, the survivor fine-tuned."""

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.finetune.race import race_cost, race_rounds, race_trial_epochs, run_race
from tests.helpers import (
    PROBLEM,
    start_job,
    start_with_worker,
    upload_target,
    wait_for_job,
    wait_for_training,
)

CONTESTANTS = [
    {"source_id": f"s{i}", "source_name": f"source {i}", "p2l_rank": i} for i in (1, 2, 3, 4, 5)
]


def scores(losses: float | np.ndarray, mean: float | None = None) -> dict[str, Any]:
    """A trial's scores: 20 validation images, each with this loss (or these losses)."""
    per_image = np.broadcast_to(np.asarray(losses, float), (20,)).copy()
    loss = float(np.asarray(losses).mean()) if mean is None else mean
    return {"val_accuracy": 0.5, "val_loss": loss, "val_losses": per_image,
            "val_correct": per_image < 1}  # fmt: skip


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    client = start_with_worker(tmp_path_factory.mktemp("race") / "data")
    yield client
    client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def target_id(service: TestClient) -> str:
    return upload_target(service, "fashion")


@pytest.mark.unit
def test_rounds_share_the_budget_equally_and_halve_the_field() -> None:
    # ceil(log2 k) rounds; each round's share is split between the sources still in.
    assert race_rounds(3, 40) == [(3, 6), (2, 10)]
    assert race_rounds(4, 40) == [(4, 5), (2, 10)]
    assert race_rounds(5, 40) == [(5, 2), (3, 4), (2, 6)]
    assert race_rounds(3, 2) == [(3, 1), (2, 1)]  # at least one epoch each
    assert race_rounds(1, 40) == []
    assert race_trial_epochs(3, 40) == [6, 6, 6, 10, 10]
    assert all(sum(c * e for c, e in race_rounds(k, 40)) <= 40 for k in range(2, 9))


@pytest.mark.unit
def test_the_survivor_of_the_last_round_wins_even_if_it_trailed_earlier() -> None:
    calls: list[tuple[str, int]] = []
    # Round 1 (5 sources, 2 epochs): s2, s4, s5 go on; round 2: s4 and s5; round 3: s5 wins.
    losses = {2: {"s1": 0.9, "s2": 0.5, "s3": 0.8, "s4": 0.6, "s5": 0.7},
              4: {"s2": 0.6, "s4": 0.5, "s5": 0.4}, 6: {"s4": 0.45, "s5": 0.3}}  # fmt: skip

    def train(source: str, epochs: int, trial: int, trials: int) -> dict[str, Any]:
        calls.append((source, epochs))
        assert trials == 10 and trial == len(calls)
        return scores(losses[epochs][source])

    record = run_race(CONTESTANTS, 40, "loss", train)
    assert calls[:5] == [(f"s{i}", 2) for i in (1, 2, 3, 4, 5)]
    assert calls[5:] == [("s2", 4), ("s4", 4), ("s5", 4), ("s4", 6), ("s5", 6)]
    assert [r["kept"] for r in record["rounds"]] == [["s2", "s4", "s5"], ["s4", "s5"], ["s5"]]
    assert record["winner"] == "s5" and record["winner_name"] == "source 5"
    assert record["epochs"] == 5 * 2 + 3 * 4 + 2 * 6
    assert "lowest validation loss (0.300)" in record["reason"]
    assert record["rounds"][2]["trials"][1] == {
        "source_id": "s5", "source_name": "source 5", "val_accuracy": 0.5, "val_loss": 0.3,
    }  # fmt: skip
    # Every image's loss is 0.15 lower than under s4 (ranked higher by P2L): far beyond noise.
    assert record["final"]["holder"] == "s4" and record["final"]["overturned"]
    assert record["final"]["mean_difference"] == pytest.approx(0.15)


@pytest.mark.unit
def test_the_final_keeps_p2ls_order_unless_the_challenger_wins_beyond_noise() -> None:
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.5, size=20)  # 20 validation images, noisy per-image losses

    def train(lead: float) -> Callable[[str, int, int, int], dict[str, Any]]:
        def trial(source: str, epochs: int, number: int, planned: int) -> dict[str, Any]:
            losses = 1.0 + noise * (source == "s2") - lead * (source == "s2")
            return scores(losses, mean=float(losses.mean()))

        return trial

    # s2's mean loss is lower, but by less than two standard errors of the difference.
    close = run_race(CONTESTANTS[:2], 4, "loss", train(0.1))
    assert close["final"]["halving_winner"] == "s2" and not close["final"]["overturned"]
    assert close["winner"] == "s1" and "within 2 standard errors" in close["reason"]
    clear = run_race(CONTESTANTS[:2], 4, "loss", train(0.6))
    assert clear["winner"] == "s2" and clear["final"]["overturned"]


@pytest.mark.unit
def test_a_tie_goes_to_the_source_p2l_ranks_higher_and_a_diverged_run_is_last() -> None:
    def train(source: str, epochs: int, trial: int, trials: int) -> dict[str, Any]:
        return {**scores(float("nan")), "val_accuracy": 0.0 if source == "s1" else 0.7}

    assert run_race(CONTESTANTS[:3], 6, "accuracy", train)["winner"] == "s2"
    tied = run_race(CONTESTANTS[:3], 6, "loss", train)
    assert tied["winner"] == "s1"  # all NaN: a tie
    # Stored as null (JSON, and PostgreSQL's json type, have no NaN), and said so.
    assert {t["val_loss"] for r in tied["rounds"] for t in r["trials"]} == {None}
    assert tied["final"]["mean_difference"] is None and not tied["final"]["overturned"]
    assert "lowest validation loss (none: diverged)" in tied["reason"]


@pytest.mark.unit
def test_the_cost_counts_the_race_and_one_fine_tune_against_every_contestant() -> None:
    cost = race_cost(race_epochs=38, finetune_epochs=64, contestants=3)
    assert cost["epochs_planned"] == 102 and cost["every_source_epochs_planned"] == 192
    assert cost["fraction_of_every_source"] == pytest.approx(102 / 192, abs=1e-3)


@pytest.mark.system
def test_a_race_job_trains_the_shortlist_then_the_survivor(
    service: TestClient, target_id: str
) -> None:
    body = {
        "target_dataset_id": target_id, "source_id": "race", "schedule": "manual",
        "epochs": 2, "race": {"top": 3, "budget_epochs": 8},
    }  # fmt: skip
    estimate = service.post("/v1/finetunes?dry_run=true", json=body)
    assert estimate.status_code == 200, estimate.text
    # Trials of 8 // (2 rounds * 3) = 1 and 8 // (2 * 2) = 2 epochs, then 2 epochs.
    assert estimate.json()["epochs_planned"] == 3 * 1 + 2 * 2 + 2
    job = start_job(service, **body)
    ranking = service.get(f"/v1/rankings/{job['params']['ranking_id']}").json()
    shortlist = [r["source_id"] for r in ranking["results"]]
    plan = job["params"]["race"]
    assert [c["source_id"] for c in plan["contestants"]] == shortlist and len(shortlist) == 3
    assert job["params"]["source_id"] == "race" and job["params"]["chosen_by"] == "race"
    assert plan["trial_epochs"] == [1, 1, 1, 2, 2]

    done = wait_for_job(service, job["id"])
    assert done["status"] == "succeeded", done["error"]
    race = done["result"]["race"]
    first, second = race["rounds"]
    assert [t["source_id"] for t in first["trials"]] == shortlist and first["epochs"] == 1
    assert [t["source_id"] for t in second["trials"]] == first["kept"] and second["epochs"] == 2
    best = min(second["trials"], key=lambda t: t["val_loss"])
    final = race["final"]
    assert final["halving_winner"] == best["source_id"] == second["kept"][0]
    assert final["holder"] == min(first["kept"], key=shortlist.index)
    assert race["winner"] == (final["challenger"] if final["overturned"] else final["holder"])
    assert race["cost"]["race_epochs"] == 7 and race["cost"]["every_source_epochs_planned"] == 6
    assert race["cost"]["race_seconds"] > 0 and race["cost"]["finetune_seconds"] > 0
    model = service.get(f"/v1/models/{done['model_id']}").json()
    assert model["source_id"] == race["winner"]
    # Progress: every trial's epochs under "race", numbered, then the survivor's.
    history = done["progress"]["history"]
    trials = [(m["phase"], m["candidate_index"]) for m in history if m["phase"] == "race"]
    assert trials == [("race", 1), ("race", 2), ("race", 3), ("race", 4), ("race", 4),
                      ("race", 5), ("race", 5)]  # fmt: skip
    assert [m["phase"] for m in history[len(trials) :]] == ["fine_tune", "fine_tune"]
    with service.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
        lines = [line for line in stream.iter_lines() if line.startswith("event:")]
    assert lines[0] == "event: job" and lines[-1] == "event: end"


@pytest.mark.system
def test_a_running_race_holds_every_contestant_and_can_be_cancelled(
    service: TestClient, target_id: str
) -> None:
    models_before = service.get("/v1/models").json()["items"]
    job = start_job(
        service, target_dataset_id=target_id, source_id="race", schedule="manual",
        patience=None, race={"top": 3, "budget_epochs": 1000},
    )  # fmt: skip
    running = wait_for_training(service, job["id"])
    assert running["progress"]["phase"] == "race" and running["progress"]["candidates"] == 5
    last = job["params"]["race"]["contestants"][-1]["source_id"]
    refused = service.delete(f"/v1/sources/{last}")
    assert refused.status_code == 409 and job["id"] in refused.json()["detail"]
    assert service.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    assert wait_for_job(service, job["id"])["status"] == "cancelled"
    assert service.get("/v1/models").json()["items"] == models_before
    assert service.get(f"/v1/sources/{last}").status_code == 200


@pytest.mark.system
@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"source_id": "best", "race": {"top": 3}}, 'race options are for source_id "race"'),
        ({"source_id": "race", "race": {"top": 1}}, "top"),
        ({"source_id": "race", "race": {"top": 9}}, "top"),
        ({"source_id": "race", "race": {"budget_epochs": 0}}, "budget_epochs"),
        ({"source_id": "race", "race": {"rounds": 2}}, "rounds"),
        ({"source_id": "race", "schedule": "manual", "val_fraction": 0}, "validation split"),
    ],
)
def test_bad_race_requests_queue_nothing(
    service: TestClient, target_id: str, body: dict, detail: str
) -> None:
    jobs_before = service.get("/v1/jobs").json()["items"]
    response = service.post("/v1/finetunes", json={"target_dataset_id": target_id, **body})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    assert detail in response.json()["detail"]
    assert service.get("/v1/jobs").json()["items"] == jobs_before
