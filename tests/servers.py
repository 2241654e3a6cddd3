"""Real service processes for tests: a free port, a started server, a clean stop."""

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Service:
    """A running server process and the base URL it answers on."""

    process: subprocess.Popen
    url: str


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def local_url(port: int) -> str:
    """The base URL of a server on 127.0.0.1:``port``."""
    return f"http://127.0.0.1:{port}"


def uvicorn_args(port: int, *options: str) -> list[str]:
    """Python arguments that serve ``app.main:app`` with uvicorn on ``port``."""
    return ["-m", "uvicorn", "app.main:app", "--port", str(port), *options]


def spawn(args: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> subprocess.Popen:
    """A Python process of this project, its output (stdout and stderr) in ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
        )


def log_tail(log: Path, chars: int = 2000) -> str:
    """The last ``chars`` characters of a log file ('' if there is none)."""
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


def wait_healthy(process: subprocess.Popen, url: str, log: Path, timeout: float = 90) -> None:
    """Poll ``url``/healthz until it answers 200; fail with the log's tail if not in time."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{log_tail(log)}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() >= deadline:
            pytest.fail(f"the server did not answer within {timeout} s:\n{log_tail(log)}")
        time.sleep(0.2)


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """Terminate the process (a graceful stop), killing it if it outlasts ``timeout`` s."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def serve(
    args: list[str],
    env: dict[str, str],
    log: Path,
    port: int,
    cwd: Path = ROOT,
    timeout: float = 90,
) -> Iterator[Service]:
    """Start ``python *args``, wait until it is healthy on ``port``, stop it on exit."""
    process = spawn(args, env, log, cwd)
    try:
        service = Service(process, local_url(port))
        wait_healthy(process, service.url, log, timeout)
        yield service
    finally:
        stop(process)


@dataclass
class Postgres:
    """A PostgreSQL cluster of the test's own (a data dir, a port), run through ``as_user``."""

    bin_dir: Path
    root: Path
    port: int
    as_user: list[str]

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self.as_user, str(self.bin_dir / tool), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            pytest.fail(f"{tool} {' '.join(args)} failed:\n{done.stdout}{done.stderr}\n{tail}")

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off "
            "-c full_page_writes=off"
        )
        self.run("pg_ctl", "-D", str(self.root / "data"), "-o", options,
                 "-l", str(self.root / "server.log"), "-w", "-t", "60", "start")  # fmt: skip

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")


@contextmanager
def own_postgres_server() -> Iterator[Postgres]:
    """A fresh PostgreSQL cluster on a free port, started; pytest.skip where none can run
    here (no server binaries; as root, no postgres user to run it as)."""
    initdbs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdbs:
        pytest.skip("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb)")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="p2l-pg-"))
    if os.geteuid() == 0:  # postgres refuses to run as root: run it as the postgres user
        runuser = shutil.which("runuser")
        if runuser is None:
            shutil.rmtree(root)
            pytest.skip("running as root and no runuser to start PostgreSQL as another user")
        try:
            shutil.chown(root, "postgres", "postgres")
        except (LookupError, PermissionError) as exc:
            shutil.rmtree(root)
            pytest.skip(f"running as root and no postgres user to run PostgreSQL as ({exc})")
        as_user = [runuser, "-u", "postgres", "--"]
    server = Postgres(Path(initdbs[-1]).parent, root, free_port(), as_user)
    try:
        server.run("initdb", "-D", str(root / "data"), "-U", "postgres", "-A", "trust",
                   "--no-sync")  # fmt: skip
        server.start()
        yield server
    finally:
        subprocess.run(
            [*as_user, str(server.bin_dir / "pg_ctl"), "-D", str(root / "data"), "-m",
             "immediate", "-w", "stop"],
            capture_output=True, timeout=60,
        )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)
