"""A race job's first part (``source_id: "race"``): short fine-tunes of P2L's shortlist, the
better half kept each round (app.finetune.race), before the survivor's full fine-tune."""

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from sqlalchemy.orm import Session, sessionmaker

from app.datasets.service import DatasetArrays
from app.families import get_spec, load_model
from app.finetune.options import FinetuneOptions
from app.finetune.pipeline import race_trial
from app.finetune.race import run_race
from app.finetune.train import Accelerator
from app.jobs.progress import ProgressWriter
from app.store import ArtifactStore
from app.zoo.sources import get_source, weights_path


def race_shortlist(
    sessions: sessionmaker[Session],
    store: ArtifactStore,
    device: torch.device,
    options: FinetuneOptions,
    plan: dict[str, Any],
    arrays: Callable[[int], DatasetArrays],
    progress: ProgressWriter,
    accelerator: Accelerator,
) -> dict[str, Any]:
    """Run the race the job planned (``params["race"]``); its record, with its seconds.

    ``arrays(size)``: the target's images at a source's input size (decoded once per size).
    """
    with sessions() as session:
        sources = {c["source_id"]: get_source(session, c["source_id"]) for c in plan["contestants"]}

    def trial(source_id: str, epochs: int, number: int, planned: int) -> dict[str, Any]:
        source = sources[source_id]
        target = arrays(source.input_size)
        model = load_model(source.architecture, source.num_classes, weights_path(store, source))
        spec = get_spec(source.architecture)
        if progress.meter is not None:  # the speed measured is this source's
            progress.meter = replace(
                progress.meter, architecture=source.architecture, input_size=source.input_size
            )
        phase = {
            "phase": "race",
            "label": f"race {number}/{planned}: {source.name}, {epochs} epochs",
            "candidate_index": number,
            "candidates": planned,
        }
        return race_trial(
            model, source.architecture, target.images, target.labels, len(target.class_names),
            spec.mean, spec.std, options, epochs, phase, device, progress.update,
            progress.should_stop, accelerator,
        )  # fmt: skip

    started = time.perf_counter()
    record = run_race(plan["contestants"], plan["budget_epochs"], plan["score"], trial)
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record
