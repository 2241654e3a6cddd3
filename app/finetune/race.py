"""``source_id: "race"``: the source to fine-tune, chosen by short fine-tunes of P2L's shortlist.

P2L ranks the zoo in one pass; its top ``k`` sources then race: successive halving (Karnin,
Koren & Somekh 2013; Jamieson & Talwalkar 2016) gives each round an equal share of the
race's epoch budget, split between the sources still in; every source trains that long on
the target's training split and is scored on its validation split (the test split sees
nothing); the better half goes on. The survivor is then fine-tuned in full like any job.

Trials train with the job's manual schedule, or with the manual default (decay 0.5) when
the job's schedule is auto: auto's own search runs once, on the survivor.

bench/race.py measures the race's regret and cost against P2L's pick and against
fine-tuning every source of the shortlist.
"""

import math
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.finetune.search import AutoScore, score_words, successive_halving

MAX_TOP = 8


class RaceOptions(BaseModel):
    """How ``source_id: "race"`` races P2L's shortlist."""

    model_config = ConfigDict(extra="forbid")

    top: int = Field(3, ge=2, le=MAX_TOP, description="Sources of P2L's ranking that race.")
    budget_epochs: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="Epochs of all the race's trials together (ceil(log2 top) rounds share "
        "them equally; a round splits its share between the sources in it). Default: the "
        "fine-tune's own epochs, so the race costs about one more fine-tune.",
    )
    score: AutoScore = Field(
        "loss",
        description="What trials are compared by on the validation split: loss (cross-"
        "entropy) or accuracy.",
    )


# Trains one source (by id) for some epochs and returns its validation scores
# ({"val_accuracy", "val_loss"}); the arguments are the source id, its epochs, and its
# trial's number and the trials planned.
TrainSource = Callable[[str, int, int, int], dict[str, float]]


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
    job's result shows: every round's trials, the winner and why, the race's epochs."""
    names = {c["source_id"]: c["source_name"] for c in contestants}
    rounds = race_rounds(len(contestants), budget_epochs)
    record = successive_halving([c["source_id"] for c in contestants], rounds, score, train)
    winner = record[-1]["kept"][0] if record else contestants[0]["source_id"]
    if record:
        won = next(t for t in record[-1]["trials"] if t["candidate"] == winner)
        reason = (
            f"{names[winner]}: {score_words(won, score)} after {len(rounds)} round(s) of "
            f"successive halving over P2L's top {len(contestants)}; ties go to the source "
            "P2L ranks higher"
        )
    else:
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
        "winner": winner,
        "winner_name": names[winner],
        "reason": reason,
        "epochs": sum(count * epochs for count, epochs in rounds),
    }


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
