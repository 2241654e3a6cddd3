"""``source_id: "race"``: the source to fine-tune, chosen by short fine-tunes of P2L's shortlist.

P2L ranks the zoo in one pass; its top ``k`` sources then race: successive halving (Karnin,
Koren & Somekh 2013; Jamieson & Talwalkar 2016) gives each round an equal share of the
race's epoch budget, split between the sources still in; every source trains that long on
the target's training split and is scored on its validation split (the test split sees
nothing); the better half goes on. In the final, the source P2L ranks lower must beat the
other by more than two standard errors of their per-image difference, or P2L's order stands.
The survivor is then fine-tuned in full like any job.

Trials train with the job's manual schedule, or with the manual default (decay 0.5) when
the job's schedule is auto: auto's own search runs once, on the survivor.

bench/race.py measures the race's regret and cost against P2L's pick and against
fine-tuning every source of the shortlist.
"""

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from app.finetune.search import AutoScore, score_words, successive_halving

MAX_TOP = 8
# The final's lower-ranked source must beat P2L's choice by this many standard errors of
# the per-image difference (chosen on the development targets: bench/race.py).
OVERTURN_STANDARD_ERRORS = 2.0


class RaceOptions(BaseModel):
    """How ``source_id: "race"`` races P2L's shortlist."""

    model_config = ConfigDict(extra="forbid")

    top: int = Field(3, ge=2, le=MAX_TOP, description="Sources of P2L's ranking that race.")
    budget_epochs: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="Epochs of all the race's trials together (ceil(log2 top) rounds share "
        "them equally; a round splits its share between the sources in it; every trial "
        "trains at least one epoch). Default: the fine-tune's own epochs, so the race costs "
        "about one more fine-tune.",
    )
    score: AutoScore = Field(
        "loss",
        description="What trials are compared by on the validation split: loss (cross-"
        "entropy) or accuracy.",
    )


# Trains one source (by id) for some epochs and returns its validation scores
# ({"val_accuracy", "val_loss"} and, per validation image, "val_losses" and "val_correct");
# the arguments are the source id, its epochs, and its trial's number and the trials planned.
TrainSource = Callable[[str, int, int, int], dict[str, Any]]


def race_rounds(contestants: int, budget_epochs: int) -> list[tuple[int, int]]:
    """(sources trained, epochs each) per round: ceil(log2 k) rounds share the budget
    equally, and each round's share is split between the sources in it (at least 1 epoch)."""
    if contestants < 2:
        return []
    rounds = math.ceil(math.log2(contestants))
    plan = []
    while contestants > 1:
        plan.append((contestants, max(1, budget_epochs // (rounds * contestants))))
        contestants = math.ceil(contestants / 2)
    return plan


def race_trial_epochs(contestants: int, budget_epochs: int) -> list[int]:
    """The epochs of every trial a race runs, in order (known before it starts)."""
    return [
        epochs for count, epochs in race_rounds(contestants, budget_epochs) for _ in range(count)
    ]


def run_race(
    contestants: list[dict[str, Any]],
    budget_epochs: int,
    score: AutoScore,
    train: TrainSource,
) -> dict[str, Any]:
    """Race the contestants ({"source_id", "source_name", ...}, in P2L's order); the record a
    job's result shows: every round's trials, the final's paired comparison, the winner and
    why, the race's epochs.

    ``train`` returns, beside the mean scores, each validation image's loss and whether it
    was right (``val_losses``, ``val_correct``): the final compares its two sources image by
    image, and the one P2L ranks lower wins only if it is better by more than
    ``OVERTURN_STANDARD_ERRORS`` standard errors of the paired difference. On a validation
    split of a few images per class short fine-tunes differ mostly by noise; P2L's order
    stands unless the race shows otherwise.
    """
    names = {c["source_id"]: c["source_name"] for c in contestants}
    order = [c["source_id"] for c in contestants]
    rounds = race_rounds(len(contestants), budget_epochs)
    per_image: dict[tuple[str, int], np.ndarray] = {}

    def scored(source_id: str, epochs: int, number: int, planned: int) -> dict[str, float]:
        scores = dict(train(source_id, epochs, number, planned))
        losses, correct = scores.pop("val_losses"), scores.pop("val_correct")
        merit = -np.asarray(losses, float) if score == "loss" else np.asarray(correct, float)
        per_image[(source_id, epochs)] = merit
        return scores

    record = successive_halving(order, rounds, score, scored)
    final = None
    if record:
        last = record[-1]
        plain_winner = last["kept"][0]
        holder = min((t["candidate"] for t in last["trials"]), key=order.index)
        challenger = next(t["candidate"] for t in last["trials"] if t["candidate"] != holder)
        difference = per_image[(challenger, last["epochs"])] - per_image[(holder, last["epochs"])]
        mean = float(np.mean(difference))
        error = _standard_error(difference)
        overturned = plain_winner == challenger and mean > OVERTURN_STANDARD_ERRORS * error
        winner = challenger if overturned else holder
        final = {
            "holder": holder,
            "challenger": challenger,
            "halving_winner": plain_winner,
            # Diverged trials give NaN: stored as null (JSON has no NaN).
            "mean_difference": mean if math.isfinite(mean) else None,
            "standard_error": error if math.isfinite(error) else None,
            "overturned": overturned,
        }
        won = next(t for t in last["trials"] if t["candidate"] == winner)
        measure = "loss" if score == "loss" else "accuracy"
        if overturned:
            why = (
                f"{score_words(won, score)}, better than {names[holder]} (ranked higher by "
                f"P2L) by {abs(mean):.3f} per validation image in {measure}, more than "
                f"{OVERTURN_STANDARD_ERRORS:g} standard errors ({error:.3f})"
            )
        elif plain_winner == challenger:
            why = (
                f"ranked higher by P2L, kept over {names[challenger]}, whose {measure} was "
                f"better by {abs(mean):.3f} per validation image: within "
                f"{OVERTURN_STANDARD_ERRORS:g} standard errors ({error:.3f})"
            )
        else:
            why = f"{score_words(won, score)} in the final"
        reason = (
            f"{names[winner]}: {why}; {len(rounds)} round(s) of successive halving over "
            f"P2L's top {len(contestants)}"
        )
    else:
        winner = order[0]
        reason = f"{names[winner]}: the only rankable source, nothing to race"
    return {
        "contestants": contestants,
        "score": score,
        "budget_epochs": budget_epochs,
        "rounds": [
            {
                "round": r["round"],
                "epochs": r["epochs"],
                "trials": [
                    {
                        "source_id": t["candidate"],
                        "source_name": names[t["candidate"]],
                        "val_accuracy": t["val_accuracy"],
                        "val_loss": t["val_loss"],
                    }
                    for t in r["trials"]
                ],
                "kept": r["kept"],
            }
            for r in record
        ],
        "final": final,
        "winner": winner,
        "winner_name": names[winner],
        "reason": reason,
        "epochs": sum(count * epochs for count, epochs in rounds),
    }


def _standard_error(values: np.ndarray) -> float:
    """Standard error of the mean (infinite for fewer than two values)."""
    if len(values) < 2:
        return math.inf
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def race_cost(race_epochs: int, finetune_epochs: int, contestants: int) -> dict[str, Any]:
    """The race's epochs plus the survivor's fine-tune, against fine-tuning every contestant
    (planned epochs: early stopping may shorten any of them)."""
    every_source = contestants * finetune_epochs
    spent = race_epochs + finetune_epochs
    return {
        "race_epochs": race_epochs,
        "finetune_epochs_planned": finetune_epochs,
        "epochs_planned": spent,
        "every_source_epochs_planned": every_source,
        "fraction_of_every_source": round(spent / every_source, 3) if every_source else None,
    }
