"""What the service says while it starts, and its two commands: `python -m app` (the
README's) and the `p2l-server` console script."""

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.__main__ import ready_message
from tests.servers import free_port, serve

ROOT = Path(__file__).resolve().parents[2]


def wait_for_line(log: Path, pattern: str, timeout: float = 10) -> str:
    """The log's text once ``pattern`` is in it (the server writes as it goes)."""
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace")
        if re.search(pattern, text) or time.monotonic() >= deadline:
            return text
        time.sleep(0.1)


@pytest.mark.system
def test_start_logs_each_step_then_the_console_and_docs_urls(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "P2L_DATA_DIR": str(tmp_path / "data"), "P2L_PORT": str(port),
           "P2L_HOST": "127.0.0.1"}  # fmt: skip
    log = tmp_path / "server.log"
    with serve(["-m", "app"], env, log, port) as service:
        text = wait_for_line(log, "P2L service ready")
        console, docs = f"{service.url}/", f"{service.url}/docs"
        assert httpx.get(console).status_code == httpx.get(docs).status_code == 200
    ready = f"P2L service ready: console {console}  API docs {docs}"
    assert ready in text, text
    # One line per step of the start, each with its duration; the URLs once all are done.
    steps = [
        r"loaded the service's code in \d+\.\d s",
        r"migrated the database in \d+\.\d s",
        r"loaded the reference network \(\w+\) in \d+\.\d s",
        r"indexed the zoo's signatures in \d+\.\d s",
        r"imported \d+ bundled sources",
        r"job worker \S+ started",
        r"Application startup complete",
        re.escape(ready),
    ]
    positions = []
    for step in steps:
        found = re.search(step, text)
        assert found, f"no line matching {step!r} in:\n{text}"
        positions.append(found.start())
    assert positions == sorted(positions), text


@pytest.mark.unit
def test_ready_message_names_a_url_a_browser_can_open() -> None:
    assert ready_message("127.0.0.1", 8000) == (
        "P2L service ready: console http://127.0.0.1:8000/  API docs http://127.0.0.1:8000/docs"
    )
    # Every interface: the local URL, and this machine's name for other machines.
    wildcard = ready_message("0.0.0.0", 8001)
    assert wildcard.startswith("P2L service ready: console http://127.0.0.1:8001/  API docs")
    assert f"from elsewhere http://{socket.gethostname()}:8001/" in wildcard
    assert "console http://[::1]:8002/" in ready_message("::1", 8002)


@pytest.mark.unit
def test_p2l_server_script_is_python_m_app(tmp_path: Path) -> None:
    """`pip install .` puts the console script beside the interpreter; its help is the
    module's, under its own name."""
    script = Path(sys.executable).with_name("p2l-server")
    assert script.exists(), (
        f"no {script}: the environment's install predates [project.scripts]; run "
        "`pip install -e '.[test]'` again"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "P2L_PORT": "1"}
    done = subprocess.run(
        [str(script), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: p2l-server ") and "--port" in done.stdout
    assert "keys" in done.stdout and "P2L_" in done.stdout
    assert list(tmp_path.iterdir()) == []  # help starts nothing
