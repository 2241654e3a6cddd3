"""App factory: settings -> storage -> reference network -> routers, error handlers, docs."""

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from app.api.audit import AuditLog
from app.api.deps import KeyDocumented, ServiceState, authenticator, route_rules
from app.api.examples import add_examples
from app.api.limits import RequestLimits
from app.api.openapi import TAGS, binary_bodies, operation_id
from app.api.problems import DEFAULT_PROBLEMS, RetryDroppedReads, add_problem_handlers
from app.api.routes import (
    architectures,
    calibration,
    datasets,
    health,
    jobs,
    models,
    projects,
    rankings,
    reference,
    sources,
)
from app.config import Settings
from app.console import routes as console
from app.db import is_transient, make_engine, migrate, session_factory, user_error_text
from app.imaging.budget import configure_decode_budget
from app.jobs.service import LeaseReaper, reap_expired_leases, sweep_unowned_artifacts
from app.memory import Trimmer, child_malloc_env, limit_arenas
from app.services import audit
from app.services.evaluations import sweep_evaluation_archives
from app.services.learning import start_signing
from app.services.rankings import prune_rankings
from app.services.sources import load_index
from app.store import make_store
from app.worker import make_runner
from app.zoo.bundled import import_bundled_zoo, load_active_reference

logger = logging.getLogger("p2l")

# tmp/ entries of other hosts' writers (and unnamed ones) are swept once this old; a dead
# local writer's at once. The supervisor sweeps this often (a listing of tmp/).
TMP_MAX_AGE_SECONDS = 3600.0
TMP_SWEEP_EVERY_SECONDS = 60.0

DESCRIPTION = """
Pick the best pretrained **source** model for a small **target** dataset from one forward
pass of the target through a reference network (P2L), then fine-tune it.

Every `/v1` route needs an `X-API-Key` header once the service has a key (P2L_API_KEYS, or
one made with `python -m app keys create`; use *Authorize*); with none, it is open. A key
belongs to a project, with a role: viewer, member, admin or operator (see `/v1/whoami`).
"""


def build_state(settings: Settings) -> ServiceState:
    """Open the database (migrated), the store (cleaned), the reference network and the zoo."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with _step("migrated the database"):
        engine = make_engine(settings.sqlalchemy_url)
        migrate(engine)
    sessions = session_factory(engine)
    with _step("opened the artifact store"):
        store = make_store(settings)
        # A dead local process's staging goes now; another host's only once old (it may write).
        store.sweep_tmp(older_than_seconds=TMP_MAX_AGE_SECONDS)
    with _step(f"loaded the reference network ({settings.reference_arch})"):
        reference_net = load_active_reference(settings)
    reference_net.share_cpus(settings.loader_threads)  # this process embeds; jobs run elsewhere
    with sessions() as session:
        # A job still 'running' may belong to a live worker elsewhere: only expired leases
        # are reaped (here, then by the supervisor and every worker's poll loop).
        requeued, ended = reap_expired_leases(session, settings.job_max_attempts)
        if requeued or ended:
            logger.warning("%d job(s) had lost their worker: %d re-queued, %d ended",
                           requeued + ended, requeued, ended)  # fmt: skip
        # A folder older than a lease, with no row, was published by a process that died
        # before its commit; a younger one may be a sibling API's or worker's, mid-commit.
        if removed := sweep_unowned_artifacts(session, store, settings.job_lease_seconds):
            logger.warning("removed %d dataset/model/source folders no row owns", removed)
        sweep_evaluation_archives(session, store, settings.job_lease_seconds)
        with _step("indexed the zoo's signatures"):
            index = load_index(
                session, store, reference_net, settings.p2l_eps, settings.claimed_images_cap
            )
        if settings.import_bundled_zoo:
            with _step("checked the bundled zoo"):  # imported on first start only
                import_bundled_zoo(session, store, index, reference_net)
    logger.info("%d rankable sources", len(index))
    return ServiceState(settings, engine, sessions, store, reference_net, index)


@contextmanager
def _step(done: str) -> Iterator[None]:
    """Log ``done`` with the seconds it took: the start takes seconds and a silent console
    looks hung (or, when one step is slow, says which)."""
    started = time.perf_counter()
    yield
    logger.info("%s in %.1f s", done, time.perf_counter() - started)


async def _supervise(
    state: ServiceState,
    every_seconds: float = 1.0,
    sweep_every_seconds: float = TMP_SWEEP_EVERY_SECONDS,
) -> None:
    """Replace a dead local worker promptly, reap expired leases (any worker's), sweep tmp/."""
    next_sweep = time.monotonic() + sweep_every_seconds
    reaper = LeaseReaper(state.settings.job_lease_seconds, state.settings.job_max_attempts)
    while True:
        await asyncio.sleep(every_seconds)
        try:
            # Reap first: after an outage its extension of the leases must come before the
            # runner starts anything that could look at them.
            await asyncio.to_thread(_reap, state, reaper)
            if state.runner is not None:
                await asyncio.to_thread(state.runner.check)
            # A writer killed mid-upload (its whole service included) must not hold its
            # staging (up to the upload cap) until the next restart.
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + sweep_every_seconds
                if removed := await asyncio.to_thread(state.store.sweep_tmp, TMP_MAX_AGE_SECONDS):
                    logger.warning("removed %d tmp/ entries of dead or stale writers", removed)
                # The images of an evaluation job that failed or was cancelled.
                await asyncio.to_thread(_sweep_evaluations, state)
                await asyncio.to_thread(_prune, state)
        except Exception as exc:  # the supervisor must outlive any one failure
            if is_transient(exc):  # the database is away: leases may expire meanwhile
                reaper.unreachable()
                logger.warning("job supervisor: %s", user_error_text(exc))
            else:
                logger.exception("job supervisor check failed")


def _sweep_evaluations(state: ServiceState) -> None:
    """Delete the stored archives of evaluation jobs that have ended."""
    with state.sessions() as session:
        sweep_evaluation_archives(session, state.store, state.settings.job_lease_seconds)


def _prune(state: ServiceState) -> None:
    """Delete the rankings and audit entries past their retention."""
    settings = state.settings
    with state.sessions() as session:
        rankings = prune_rankings(session, settings.ranking_retention_days)
        entries = audit.prune(session, settings.audit_retention_days)
    if rankings or entries:
        logger.info("retention: deleted %d rankings, %d audit entries", rankings, entries)


def _reap(state: ServiceState, reaper: LeaseReaper) -> None:
    """Re-queue or fail the jobs whose worker stopped renewing its lease."""
    with state.sessions() as session:
        requeued, ended = reaper.reap(session)
    if requeued or ended:
        logger.warning("reaped expired job leases: %d re-queued, %d ended", requeued, ended)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The schema with an example for every body, and binary bodies marked as such."""
    return binary_bodies(add_examples(FastAPI.openapi(app)))  # cached by FastAPI; idempotent


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app; state is built in the lifespan so importing stays cheap."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Before the request threads exist: each thread would get its own arena, each
        # keeping its share of a burst's freed buffers.
        limit_arenas(settings.malloc_arena_max)
        # glibc reads this at start-up: the worker (spawned, not forked) gets the same cap.
        for name, value in child_malloc_env(settings.malloc_arena_max).items():
            os.environ.setdefault(name, value)
        # Requests wait this long for decode memory, then get 503 + Retry-After.
        configure_decode_budget(settings.decode_memory_bytes, settings.decode_wait_seconds)
        state = build_state(settings)
        app.state.service = state
        # The bundled targets' shipped signatures, or (missing or stale) signed in the background.
        start_signing(state.reference, state.store)
        if settings.start_worker:
            state.runner = make_runner(settings, state.sessions)
            state.runner.start()
        supervisor = asyncio.create_task(_supervise(state))
        tasks = [supervisor]
        if settings.memory_trim_seconds > 0:
            # After a burst, RSS comes back to about idle within a second or two.
            tasks.append(asyncio.create_task(Trimmer(settings.memory_trim_seconds).loop()))
        yield
        for task in tasks:
            task.cancel()
        if state.runner is not None:
            await asyncio.to_thread(state.runner.stop)
        state.engine.dispose()

    app = FastAPIOffline(
        title="P2L transfer-learning service",
        version="0.1.0",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        # Operation ids generated clients read well: datasets_upload, not
        # upload_dataset_v1_datasets_post.
        generate_unique_id_function=operation_id,
        lifespan=lifespan,
        swagger_ui_parameters={"persistAuthorization": True},
        responses=DEFAULT_PROBLEMS,
    )
    app.include_router(health.router)
    routers = (
        projects, reference, architectures, datasets, sources, rankings, calibration, jobs, models
    )  # fmt: skip
    for router in routers:  # every /v1 route: a principal (RequestLimits checks the key)
        app.include_router(router.router, dependencies=[KeyDocumented])
    app.include_router(console.router)  # the web console at /: HTML pages, no schema
    app.mount("/console/static", console.static_files(), name="console-static")
    # FastAPI's documented way to change the schema is to replace this method.
    app.openapi = partial(_openapi, app)  # type: ignore[method-assign]
    add_problem_handlers(app)
    # The last added runs first: the audit log (it sees what answered), limits (the key;
    # HEAD becomes GET there), then the retry of reads.
    app.add_middleware(RetryDroppedReads)
    rules = route_rules(app)  # one reading of the OpenAPI document for both
    app.add_middleware(
        RequestLimits,
        route_rules=rules,
        authenticate=authenticator(lambda: app.state.service.sessions(), settings),
        max_upload_bytes=settings.max_upload_bytes,
        max_json_bytes=settings.max_json_bytes,
        body_timeout_seconds=settings.body_timeout_seconds,
    )
    app.add_middleware(
        AuditLog,
        sessions=lambda: app.state.service.sessions(),
        route_rules=rules,
    )
    return app


app = create_app()
