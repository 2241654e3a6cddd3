"""App factory: settings -> storage -> reference network -> routers, error handlers, docs."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from app.api.deps import ServiceState
from app.api.problems import DEFAULT_PROBLEMS, BodySizeLimit, add_problem_handlers
from app.api.routes import datasets, health, jobs, models, rankings, reference, sources
from app.config import Settings
from app.datasets.service import remove_orphans
from app.db import make_engine, migrate, session_factory
from app.jobs.runner import JobRunner, LocalProcessRunner
from app.jobs.service import fail_orphaned_jobs
from app.p2l.reference import share_cpus_with_decoding
from app.store import LocalArtifactStore
from app.zoo.bundled import import_bundled_zoo, load_active_reference
from app.zoo.sources import load_index

logger = logging.getLogger("p2l")

DESCRIPTION = """
Pick the best pretrained **source** model for a small **target** dataset from one forward
pass of the target through a reference network (P2L), then fine-tune it.

State-changing routes need an `X-API-Key` header when the service runs with `P2L_API_KEYS`
set (use *Authorize*); otherwise the service is open.
"""


def build_state(settings: Settings) -> ServiceState:
    """Open the database (migrated), the store (cleaned), the reference network and the zoo."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.sqlalchemy_url)
    migrate(engine)
    sessions = session_factory(engine)
    store = LocalArtifactStore(settings.data_dir)
    # With workers of its own only, nothing else writes now; else spare recent staging.
    store.sweep_tmp(older_than_seconds=0 if settings.start_worker else 3600)
    reference_net = load_active_reference(settings)
    share_cpus_with_decoding(settings.loader_threads)  # this process embeds; jobs run elsewhere
    with sessions() as session:
        if removed := remove_orphans(session, store):
            logger.warning("removed %d dataset folders left by an interrupted upload", removed)
        # The API owns its worker: a job still 'running' now lost its worker with the API.
        if settings.start_worker and (
            failed := fail_orphaned_jobs(session, "the service restarted while this job ran")
        ):
            logger.warning("%d job(s) were running when the service stopped: failed", failed)
        index = load_index(session, store, reference_net, settings.p2l_eps)
        if settings.import_bundled_zoo:
            import_bundled_zoo(session, store, index, reference_net)
    return ServiceState(settings, engine, sessions, store, reference_net, index)


async def _supervise(runner: JobRunner, every_seconds: float = 1.0) -> None:
    """Notice a dead worker promptly: its jobs are failed and a new worker started."""
    while True:
        await asyncio.sleep(every_seconds)
        try:
            await asyncio.to_thread(runner.check)
        except Exception:  # the supervisor must outlive any one failure
            logger.exception("job supervisor check failed")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app; state is built in the lifespan so importing stays cheap."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = build_state(settings)
        app.state.service = state
        supervisor = None
        if settings.start_worker:
            state.runner = LocalProcessRunner(settings, state.sessions)
            state.runner.start()
            supervisor = asyncio.create_task(_supervise(state.runner))
        yield
        if supervisor is not None:
            supervisor.cancel()
        if state.runner is not None:
            await asyncio.to_thread(state.runner.stop)
        state.engine.dispose()

    app = FastAPIOffline(
        title="P2L transfer-learning service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        swagger_ui_parameters={"persistAuthorization": True},
        responses=DEFAULT_PROBLEMS,
    )
    app.include_router(health.router)
    app.include_router(reference.router)
    app.include_router(datasets.router)
    app.include_router(sources.router)
    app.include_router(rankings.router)
    app.include_router(jobs.router)
    app.include_router(models.router)
    add_problem_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    return app


app = create_app()
