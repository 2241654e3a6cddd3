"""Database engine and sessions: SQLite (WAL) by default, PostgreSQL by URL; Alembic migrates."""

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

from alembic import command
from alembic.config import Config
from sqlalchemy import CursorResult, Engine, Result, create_engine, event, text
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

logger = logging.getLogger("p2l.db")

T = TypeVar("T")

# What users read instead of a database error's text (which may quote SQL and values).
DATABASE_UNAVAILABLE = "the database is unavailable (connection lost or refused)"
DATABASE_FAILED = "a database error occurred; the server log has the details"
# A 503 for an unreachable database (a request's, or readiness) asks to come back this soon.
DATABASE_RETRY_AFTER_SECONDS = 5
# A PostgreSQL connection that cannot be made in this long fails (default: wait forever).
CONNECT_TIMEOUT_SECONDS = 10

# PostgreSQL advisory lock keys (any constants unique to this service).
MIGRATE_LOCK = 0x7032_6C01
BUNDLED_IMPORT_LOCK = 0x7032_6C02
ZOO_CHANGE_LOCK = 0x7032_6C03


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys and a busy timeout on every connection."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # pre-ping: a connection dropped while idle in the pool is replaced at check-out.
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql") and "connect_timeout" not in url:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_SECONDS  # never hang on a dead host
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


@contextmanager
def advisory_lock(engine: Engine, key: int) -> Iterator[None]:
    """Hold a PostgreSQL session advisory lock for the block (other processes wait).

    A no-op on SQLite, where one writer at a time is the rule already. The lock lives on a
    connection of its own, so the work inside may commit as often as it likes.
    """
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})


def lock_zoo_changes(session: Session) -> None:
    """Make this transaction the only zoo writer until it commits (PostgreSQL).

    A zoo_changes seq is drawn after this lock and committed before it is released, so
    seqs become visible in order: a reader that sees seq N has seen every seq below it.
    SQLite serialises writers on its own, with the same effect.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ZOO_CHANGE_LOCK})


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (one process at a time)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Replicas starting together would otherwise race to create the same tables.
    with advisory_lock(engine, MIGRATE_LOCK), engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded attributes after commit (responses read them)."""
    return sessionmaker(engine, expire_on_commit=False)


def rows_matched(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE matched (SQLAlchemy types execute() as a plain Result)."""
    return cast(CursorResult[Any], result).rowcount


# SQLSTATEs worth a new try, besides class 08 (connection exception): a server shutting down
# or starting (57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now), a
# session ended for idling (57P05, 25P03), and a transaction that lost a race and is meant
# to be run again (40001 serialization_failure, 40P01 deadlock_detected, 55P03
# lock_not_available).
_RETRY_SQLSTATES = ("57P01", "57P02", "57P03", "57P05", "25P03", "40001", "40P01", "55P03")
# SQLite's transient errors: another writer holds the database for longer than the timeout.
_SQLITE_BUSY = ("database is locked", "database table is locked", "database is busy")


def is_transient(exc: BaseException) -> bool:
    """A database error that a new try may not meet again: the connection was dropped (the
    server restarted, a backend was terminated) or could not be made, the database was busy,
    or the transaction lost a race it is meant to be retried after (a deadlock, a
    serialization failure). Not a constraint, a bad value, a missing table, a full disk, a
    statement's timeout, or a bug in one: retried, those fail the same way."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if not isinstance(exc, OperationalError | InterfaceError):
        return False
    original = exc.orig
    if type(original).__module__ == "sqlite3":
        return any(words in str(original) for words in _SQLITE_BUSY)
    sqlstate = getattr(original, "sqlstate", None)
    if sqlstate:  # the server answered with a reason
        return sqlstate.startswith("08") or sqlstate in _RETRY_SQLSTATES
    # No SQLSTATE: the client could not reach the server or lost it (refused, reset, closed;
    # also a refused login or a missing database, which only an operator fixes).
    return True


def user_error_text(exc: BaseException) -> str | None:
    """What a user may read of a database error (never its SQL); None if ``exc`` is not
    one. The caller logs the error itself."""
    if not isinstance(exc, SQLAlchemyError):  # its text may quote SQL and values
        return None
    return DATABASE_UNAVAILABLE if is_transient(exc) else DATABASE_FAILED


def retry_transient(
    work: Callable[[], T],
    seconds: float,
    what: str,
    first_delay: float = 0.2,
    max_delay: float = 5.0,
) -> T:
    """``work()``, again with backoff while it fails transiently (``is_transient``), for up
    to ``seconds``; then its error. Each try must open its own session: the pool replaces
    the dropped connection."""
    deadline = time.monotonic() + seconds
    delay = first_delay
    while True:
        try:
            return work()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                raise
            logger.warning("%s: database unavailable (%s); retrying in %.1f s", what, exc, delay)
            time.sleep(delay)
            delay = min(2 * delay, max_delay)
