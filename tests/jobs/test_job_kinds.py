"""Job kinds: a job's params go in typed and come back typed; a job no kind can run ends
failed with the reason (it does not hang, and does not take the worker down)."""

from pathlib import Path

import pytest
import torch
from pydantic import BaseModel
from sqlalchemy import text

from app.config import Settings
from app.db import DATABASE_FAILED, make_engine, migrate, session_factory
from app.finetune.options import FinetuneOptions
from app.jobs.kinds import JobKind, JobKinds, JobRun
from app.jobs.service import claim_next_job, submit_job
from app.jobs.worker import Lease, run_job
from app.models import Job, JobStatus
from app.services.finetunes import FINETUNE, Contestant, FinetuneJobParams, RacePlan
from app.store import make_store
from app.worker import JOB_KINDS

pytestmark = pytest.mark.unit


def test_finetune_params_are_stored_as_json_and_read_back_the_same() -> None:
    plain = FinetuneJobParams(
        target_dataset_id="d" * 32, source_id="s" * 32, source_name="fashion_9k",
        chosen_by="p2l", ranking_id="r" * 32, layer_groups=["stem", "head"],
        options=FinetuneOptions(epochs=3),
    )  # fmt: skip
    stored = plain.stored()
    assert "race" not in stored  # a job that does not race says nothing of a race
    assert stored["options"]["epochs"] == 3 and stored["ranking_id"] == "r" * 32
    assert FINETUNE.params_of(Job(params=stored)) == plain

    race = plain.model_copy(
        update={
            "source_id": "race",
            "race": RacePlan(
                budget_epochs=4,
                contestants=[
                    Contestant(source_id=f"{i}" * 32, source_name=f"s{i}", p2l_rank=i)
                    for i in (1, 2)
                ],
                trial_epochs=[2, 2],
            ),
        }
    )
    assert FINETUNE.params_of(Job(params=race.stored())).source_ids() == ["1" * 32, "2" * 32]
    assert [p for p in race.phases() if p[0] == "race"] == [("race", 2), ("race", 2)]


@pytest.mark.parametrize(
    ("kind", "params", "reason"),
    [
        ("reticulate", {}, "ValueError: unknown job kind 'reticulate'"),
        ("finetune", {"target_dataset_id": 7}, "ValidationError: "),
    ],
)
def test_a_job_no_kind_can_run_ends_failed_with_the_reason(
    tmp_path: Path, kind: str, params: dict, reason: str
) -> None:
    run, ended = run_one_job(tmp_path, JOB_KINDS, kind, params)
    assert run is None  # it never reached a handler
    assert ended.status == JobStatus.FAILED
    assert ended.error is not None and ended.error.startswith(reason), ended.error
    assert ended.progress["phase"] == "failed"


class NoParams(BaseModel):
    pass


def query_a_missing_table(run: JobRun[NoParams]) -> None:
    with run.sessions() as session:
        session.execute(text("SELECT secret FROM no_such_table"))


def test_a_job_whose_query_fails_fails_it_is_not_handed_back_for_ever(tmp_path: Path) -> None:
    # A missing table is a database error (OperationalError on SQLite) but no lost
    # connection: retried it fails the same, so the job fails, its error free of SQL.
    kinds = {"broken": JobKind("broken", NoParams, query_a_missing_table)}
    _, ended = run_one_job(tmp_path, kinds, "broken", {})
    assert ended.status == JobStatus.FAILED, ended.progress
    assert ended.attempts == 1
    assert ended.error == DATABASE_FAILED


def run_one_job(
    tmp_path: Path, kinds: JobKinds, kind: str, params: dict
) -> tuple[JobRun | None, Job]:
    """Submit a job, claim it and run it as a worker does, over a fresh SQLite database;
    what ``run_job`` returned, and the job's row once it ended."""
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", start_worker=False)
    settings.data_dir.mkdir(parents=True)
    engine = make_engine(settings.sqlalchemy_url)
    migrate(engine)
    sessions = session_factory(engine)
    with sessions() as session:
        job_id = submit_job(session, kind, params).id
        session.commit()
        job = claim_next_job(session, "worker-k", settings.job_lease_seconds)
    assert job is not None and job.id == job_id
    with Lease(sessions, settings, job.id, "worker-k") as lease:
        run = run_job(kinds, sessions, make_store(settings), torch.device("cpu"), job, lease)
    with sessions() as session:
        ended = session.get(Job, job_id)
    engine.dispose()
    assert ended is not None
    return run, ended
