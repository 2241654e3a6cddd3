"""Fixtures: a real service over a temporary data dir, on SQLite and on real PostgreSQL."""

import os
import subprocess
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import make_engine, migrate, session_factory
from app.main import create_app
from tests.servers import Postgres, own_postgres_server

TIERS = ("unit", "api", "system")  # the markers declared in pyproject.toml


def declared_tiers(item: pytest.Item) -> list[str]:
    """The tier markers a test declares itself (module, class or function), not counting
    the one a parameter adds: ``database_url`` moves its PostgreSQL variant to system."""
    names = Counter(mark.name for mark in item.iter_markers() if mark.name in TIERS)
    callspec = getattr(item, "callspec", None)
    names -= Counter(mark.name for mark in (callspec.marks if callspec else []))
    return sorted(names.elements())


@pytest.hookimpl(tryfirst=True)  # before -m deselects anything
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse to run a test that does not declare exactly one tier (unit, api or system)."""
    wrong = [
        f"{item.nodeid} ({', '.join(tiers) or 'none'})"
        for item in items
        if len(tiers := declared_tiers(item)) != 1
    ]
    if wrong:
        raise pytest.UsageError(
            "every test needs exactly one of the markers unit, api, system "
            "(see [tool.pytest.ini_options] markers in pyproject.toml):\n  " + "\n  ".join(wrong)
        )


POSTGRES_URL = os.environ.get(
    "P2L_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """URL of a reachable PostgreSQL server, or skip the test with the reason."""
    engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL} ({type(exc).__name__})")
    finally:
        engine.dispose()
    return POSTGRES_URL


@pytest.fixture
def postgres_database(postgres_server: str) -> Iterator[str]:
    """A brand-new, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"p2l_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def own_postgres() -> Iterator[Postgres]:
    """A PostgreSQL server of the test's own, which it may stop and start again (same port)."""
    with own_postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.system)])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """Each storage test runs on the default SQLite file and on a real PostgreSQL database.

    The PostgreSQL variant is a system test: a database created and dropped per test costs
    seconds, so the inner loop (``-m "not system"``) runs the SQLite one.
    """
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_database")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """The service's data dir, inside a sandbox folder tests can inspect around it."""
    return tmp_path / "sandbox" / "data"


@pytest.fixture
def make_client(data_dir: Path) -> Iterator[Callable[..., TestClient]]:
    """Factory of started services over ``data_dir``; settings overrides as keywords.

    No job worker unless a test asks for one (``start_worker=True``): spawning it costs
    seconds of CPU that most tests do not need.
    """
    clients: list[TestClient] = []

    def start(**overrides: object) -> TestClient:
        settings = Settings(
            _env_file=None, **{"data_dir": data_dir, "start_worker": False, **overrides}
        )
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    """A service on the embedded default (SQLite in the data dir)."""
    return make_client()


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    """A session over a fresh, migrated SQLite database (no service around it)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'p2l.db'}")
    migrate(engine)
    with session_factory(engine)() as session:
        yield session
    engine.dispose()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    """Processes a test starts; killed at its end whatever happened."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        process.kill()
        process.wait(10)
