"""``schedule: auto``: which degree of fine-tuning to train, chosen on the validation split.

Two searches over the same candidates (from "train every layer alike" to "frozen feature
extractor"), both scoring a candidate on the validation split after a short run (by the
checkpoint with the best validation accuracy), by its cross-entropy (``loss``, the default:
on a validation split of a few images per class, accuracy moves in coarse steps and ties)
or its accuracy:

- ``exhaustive`` trains every candidate for ``auto_epochs`` (4 x ``auto_epochs`` epochs).
- ``halving`` (successive halving, Jamieson & Talwalkar 2016; Li et al., Hyperband, 2018)
  trains every candidate for a quarter of ``auto_epochs``, keeps the better half, doubles
  their epochs, and so on until one is left: the runs that cost most go to the contenders
  (24 epochs at ``auto_epochs`` 10, 0.6x exhaustive's; no cheaper below ``auto_epochs`` 3).

A trial's model is its checkpoint with the best validation accuracy (as in any fine-tune);
``loss`` scores that checkpoint.

bench/finetuning_degree.py measures what either choice is worth against every fixed schedule.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

AutoSearch = Literal["halving", "exhaustive"]
AutoScore = Literal["loss", "accuracy"]

# What ``schedule: auto`` tries, from "train everything alike" to "frozen feature extractor".
AUTO_CANDIDATES: tuple[dict[str, Any], ...] = (
    {"decay": 1.0},
    {"decay": 0.5},
    {"decay": 0.1},
    {"decay": 1.0, "freeze_below": -1},  # -1: every group below the head
)
# Halving's first round trains each candidate for this share of ``auto_epochs``.
HALVING_FIRST_SHARE = 0.25

# Trains one candidate for some epochs and returns its validation scores ({"val_accuracy",
# "val_loss"}); the arguments are the candidate, its epochs, and its trial's number and the
# trials planned.
TrainCandidate = Callable[[dict[str, Any], int, int, int], dict[str, float]]


def describe_candidate(candidate: dict[str, Any]) -> str:
    """An auto-search candidate in words, e.g. "decay 0.5" or "frozen feature extractor"."""
    if candidate.get("freeze_below") == -1:
        return "frozen feature extractor (head only)"
    return ", ".join(f"{key.replace('_', ' ')} {value:g}" for key, value in candidate.items())


def halving_rounds(candidates: int, auto_epochs: int) -> list[tuple[int, int]]:
    """(candidates trained, epochs each) per round of successive halving, down to one left."""
    rounds, epochs = [], max(1, math.ceil(auto_epochs * HALVING_FIRST_SHARE))
    while candidates > 1:
        rounds.append((candidates, epochs))
        candidates, epochs = math.ceil(candidates / 2), epochs * 2
    return rounds


def search_rounds(search: AutoSearch, auto_epochs: int) -> list[tuple[int, int]]:
    """(candidates trained, epochs each) per round of a search."""
    if search == "exhaustive":
        return [(len(AUTO_CANDIDATES), auto_epochs)]
    return halving_rounds(len(AUTO_CANDIDATES), auto_epochs)


def trial_epochs(search: AutoSearch, auto_epochs: int) -> list[int]:
    """The epochs of every trial a search runs, in order (known before it starts)."""
    return [epochs for count, epochs in search_rounds(search, auto_epochs) for _ in range(count)]


def merit(trial: dict[str, Any], score: AutoScore) -> float:
    """How good a trial's validation scores are (larger is better); a diverged run (NaN,
    infinite or missing loss) is worst."""
    value = trial["val_loss"] if score == "loss" else trial["val_accuracy"]
    if value is None or not math.isfinite(value):
        return -math.inf
    return -float(value) if score == "loss" else float(value)


def successive_halving(
    candidates: Sequence[Any],
    rounds: list[tuple[int, int]],
    score: AutoScore,
    train: Callable[[Any, int, int, int], dict[str, float]],
    keep_one: bool = False,
) -> list[dict[str, Any]]:
    """Train the candidates still in, round after round, keeping the better half each time
    (only the best with ``keep_one``); every round's record, the last one's ``kept[0]`` won.

    ``train(candidate, epochs, trial number, trials planned)`` returns validation scores. A
    stable sort: on a tie the candidate listed first stays.
    """
    planned = sum(count for count, _ in rounds)
    alive = list(candidates)
    trial_number = 0
    record: list[dict[str, Any]] = []
    for number, (_, epochs) in enumerate(rounds, start=1):
        trials: list[dict[str, Any]] = []
        for candidate in alive:
            trial_number += 1
            trials.append(
                {"candidate": candidate, **train(candidate, epochs, trial_number, planned)}
            )
        ranked = sorted(range(len(trials)), key=lambda i: -merit(trials[i], score))
        keep = 1 if keep_one else math.ceil(len(trials) / 2)
        alive = [alive[i] for i in sorted(ranked[:keep])]  # in the candidates' order
        # A diverged run's NaN or infinite score is stored as null (JSON has no NaN).
        stored = [
            {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in t.items()}
            for t in trials
        ]
        record.append({"round": number, "epochs": epochs, "trials": stored, "kept": alive})
    return record


def score_words(trial: dict[str, Any], score: AutoScore) -> str:
    """A trial's deciding figure in words, e.g. "lowest validation loss (0.412)"."""
    if score == "loss":
        words, figure = "lowest validation loss", trial["val_loss"]
    else:
        words, figure = "best validation accuracy", trial["val_accuracy"]
    return f"{words} ({figure:.3f})" if figure is not None else f"{words} (none: diverged)"


def run_search(
    search: AutoSearch, score: AutoScore, auto_epochs: int, train: TrainCandidate
) -> dict[str, Any]:
    """Run a search; the record a job's result shows (rounds, scores, choice and reason)."""
    rounds = search_rounds(search, auto_epochs)
    record = successive_halving(
        AUTO_CANDIDATES, rounds, score, train, keep_one=search == "exhaustive"
    )
    chosen = record[-1]["kept"][0]
    won = next(t for t in record[-1]["trials"] if t["candidate"] == chosen)
    how = (
        f"every candidate trained {auto_epochs} epochs"
        if search == "exhaustive"
        else f"successive halving, {len(rounds)} rounds, last round {rounds[-1][1]} epochs"
    )
    return {
        "search": search,
        "score": score,
        "chosen": chosen,
        "reason": f"{describe_candidate(chosen)}: {score_words(won, score)} in the auto search "
        f"({how}); ties go to the candidate listed first (the larger decay)",
        "rounds": record,
        "epochs": sum(count * epochs for count, epochs in rounds),
        # The last round's scores, in the shape results had before halving existed.
        "candidates": record[-1]["trials"],
        "budget_epochs_per_candidate": auto_epochs,
        "note": "freeze_below -1 means every group below the head is frozen",
    }
