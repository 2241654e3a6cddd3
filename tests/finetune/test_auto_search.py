"""auto's searches: what they train, for how long, what they keep, and what they report."""

from typing import Any

import pytest

from app.api.streams import changes
from app.finetune.options import FinetuneOptions
from app.finetune.search import (
    AUTO_CANDIDATES,
    describe_candidate,
    halving_rounds,
    run_search,
    trial_epochs,
)
from app.jobs.estimates import phase_plan

pytestmark = pytest.mark.unit

DECAY_1, DECAY_05, DECAY_01, FROZEN = AUTO_CANDIDATES


class Trainer:
    """Scores candidates from a table and records every call (what a search asked for)."""

    def __init__(self, scores: dict[int, dict[int, tuple[float, float]]]) -> None:
        self.scores = scores  # epochs -> candidate index -> (val accuracy, val loss)
        self.calls: list[tuple[dict[str, Any], int, int, int]] = []

    def __call__(
        self, candidate: dict[str, Any], epochs: int, trial: int, trials: int
    ) -> dict[str, float]:
        self.calls.append((candidate, epochs, trial, trials))
        accuracy, loss = self.scores[epochs][AUTO_CANDIDATES.index(candidate)]
        return {"val_accuracy": accuracy, "val_loss": loss}


def test_halving_trains_every_candidate_briefly_and_the_better_half_twice_as_long() -> None:
    assert halving_rounds(4, 10) == [(4, 3), (2, 6)]
    assert trial_epochs("halving", 10) == [3, 3, 3, 3, 6, 6]
    assert trial_epochs("halving", 1) == [1, 1, 1, 1, 2, 2]
    assert trial_epochs("exhaustive", 10) == [10, 10, 10, 10]
    # The search costs 24 epochs where the exhaustive one costs 40.
    assert sum(trial_epochs("halving", 10)) < sum(trial_epochs("exhaustive", 10))


# Round 1: decay 0.5 and 0.1 have the lowest losses, decay 1 and 0.5 the best accuracies.
ROUND_1 = {0: (0.8, 0.9), 1: (0.8, 0.5), 2: (0.7, 0.6), 3: (0.6, 1.2)}


def test_halving_keeps_the_better_half_and_chooses_on_the_last_round() -> None:
    trainer = Trainer({3: ROUND_1, 6: {1: (0.9, 0.45), 2: (0.85, 0.4)}})
    search = run_search("halving", "loss", 10, trainer)
    # Round 2 retrains the two best of round 1 (in the candidates' order) for longer, and
    # its winner is chosen even though it lost round 1.
    assert [(c, e) for c, e, _, _ in trainer.calls] == [
        (DECAY_1, 3), (DECAY_05, 3), (DECAY_01, 3), (FROZEN, 3), (DECAY_05, 6), (DECAY_01, 6),
    ]  # fmt: skip
    assert [(t, n) for _, _, t, n in trainer.calls] == [(i, 6) for i in range(1, 7)]
    assert search["chosen"] == DECAY_01
    assert [r["kept"] for r in search["rounds"]] == [[DECAY_05, DECAY_01], [DECAY_01]]
    assert [r["epochs"] for r in search["rounds"]] == [3, 6]
    assert search["epochs"] == 24 == sum(e for _, e, _, _ in trainer.calls)
    assert (search["search"], search["score"]) == ("halving", "loss")
    assert search["reason"].startswith(f"{describe_candidate(DECAY_01)}: lowest validation loss")
    assert "(0.400)" in search["reason"] and "successive halving" in search["reason"]
    assert search["rounds"][1]["trials"][1] == {
        "candidate": DECAY_01, "val_accuracy": 0.85, "val_loss": 0.4,
    }  # fmt: skip


def test_the_score_decides_what_survives() -> None:
    trainer = Trainer({3: ROUND_1, 6: {0: (0.9, 0.7), 1: (0.88, 0.3)}})
    search = run_search("halving", "accuracy", 10, trainer)
    # By accuracy, decay 1 and 0.5 survive round 1 (0.8 each); then decay 1 wins on 0.9.
    assert search["rounds"][0]["kept"] == [DECAY_1, DECAY_05]
    assert search["chosen"] == DECAY_1
    assert "best validation accuracy (0.900)" in search["reason"]


def test_exhaustive_trains_every_candidate_once_for_the_whole_budget() -> None:
    trainer = Trainer({10: {0: (0.5, 1.0), 1: (0.6, 0.8), 2: (0.6, 0.8), 3: (0.55, 0.9)}})
    search = run_search("exhaustive", "accuracy", 10, trainer)
    assert [e for _, e, _, _ in trainer.calls] == [10] * 4
    # A tie goes to the candidate listed first: the one that trains more layers.
    assert search["chosen"] == DECAY_05
    assert run_search("exhaustive", "loss", 10, trainer)["chosen"] == DECAY_05
    assert len(search["candidates"]) == 4 and search["epochs"] == 40
    assert "every candidate trained 10 epochs" in search["reason"]


@pytest.mark.parametrize("search", ["halving", "exhaustive"])
def test_a_jobs_plan_holds_every_trial_of_its_search(search: str) -> None:
    options = FinetuneOptions(auto_search=search, auto_epochs=4, epochs=7, baseline=True)
    plan = phase_plan(options)
    assert plan == [
        *(("auto_search", e) for e in trial_epochs(search, 4)), ("fine_tune", 7), ("baseline", 7),
    ]  # fmt: skip
    manual = FinetuneOptions(schedule="manual", epochs=7)
    assert phase_plan(manual) == [("fine_tune", 7)]


def test_a_diverged_candidate_never_survives() -> None:
    nan = float("nan")
    trainer = Trainer({3: {0: (0.25, nan), 1: (0.8, 0.5), 2: (0.7, 0.6), 3: (0.6, 1.2)},
                       6: {1: (0.9, 0.45), 2: (0.85, 0.4)}})  # fmt: skip
    assert run_search("halving", "loss", 10, trainer)["rounds"][0]["kept"] == [DECAY_05, DECAY_01]


def test_a_job_stored_before_the_search_choice_keeps_the_search_it_was_queued_with() -> None:
    stored = FinetuneOptions().model_dump(exclude={"auto_search", "auto_score"})
    options = FinetuneOptions.from_record(stored)
    assert (options.auto_search, options.auto_score) == ("exhaustive", "accuracy")
    assert phase_plan(options)[:4] == [("auto_search", 10)] * 4
    assert FinetuneOptions.from_record(FinetuneOptions().model_dump()).auto_search == "halving"


def epoch(trial: int, number: int, **stored: Any) -> dict[str, Any]:
    """An auto-search epoch as a job's progress history keeps it."""
    return {"phase": "auto_search", "epoch": number, "candidate_index": trial, "train_loss": 1.0,
            "train_accuracy": 0.5, "val_accuracy": 0.5, "seconds": 0.1, **stored}  # fmt: skip


def stream_of(options: dict[str, Any], history: list[dict[str, Any]]) -> list[tuple[str, dict]]:
    """The events a client gets when a job's progress jumps from queued to ``history``."""
    params = {"options": options}
    last = {"status": "running", "params": params, "progress": {"phase": "queued"}}
    latest = history[-1]  # the trial now training, as the worker's progress names it
    now = {"phase": "auto_search", "epoch": latest["epoch"], "history": history,
           "candidate_index": latest["candidate_index"], "candidate": latest.get("candidate"),
           "epochs_done": len(history)}  # fmt: skip
    return changes(last, {"status": "running", "params": params, "progress": now})


def test_a_stream_gives_each_halving_trial_its_own_length_and_candidate() -> None:
    options = FinetuneOptions(auto_epochs=2).model_dump()  # trials of 1, 1, 1, 1, 2, 2 epochs
    history = [epoch(t, 1, candidate=AUTO_CANDIDATES[t - 1]) for t in (1, 2, 3, 4)]
    history += [epoch(5, 1, candidate=DECAY_05), epoch(5, 2, candidate=DECAY_05)]
    events = stream_of(options, history)
    assert [e["epochs"] for name, e in events if name == "epoch"] == [1, 1, 1, 1, 2, 2]
    phases = [e for name, e in events if name == "phase"]
    assert [p["candidate_index"] for p in phases] == [1, 2, 3, 4, 5]
    assert phases[4]["candidate"] == DECAY_05 and phases[4]["epochs"] == 2


def test_a_job_stored_before_halving_streams_the_trials_it_ran() -> None:
    options = FinetuneOptions(auto_epochs=2).model_dump(exclude={"auto_search", "auto_score"})
    history = [epoch(1, 1), epoch(1, 2), epoch(2, 1)]  # no candidate stored with the epochs
    events = stream_of(options, history)
    assert [e["epochs"] for name, e in events if name == "epoch"] == [2, 2, 2]
    first = next(e for name, e in events if name == "phase")
    assert first["candidate"] == DECAY_1 and first["candidates"] == 4
