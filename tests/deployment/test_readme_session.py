"""The README's curl session runs as written against a real service (its CLI twin is run by
tests/test_client.py)."""

import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import Service, free_port, serve, uvicorn_args

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def curl_session() -> str:
    """The bash block of the README's "A complete session with curl"."""
    section = README.split("## A complete session with curl", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return block


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The embedded default, as the README's first command starts it (with its worker)."""
    work = tmp_path_factory.mktemp("readme-session")
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2L_")}
    env |= {"P2L_DATA_DIR": str(work / "data"), "PYTHONPATH": str(ROOT)}
    port = free_port()
    with serve(uvicorn_args(port, "--log-level", "warning"), env, work / "server.log", port,
               cwd=work, timeout=180) as live:  # fmt: skip
        yield live


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="needs curl and jq")
def test_the_readme_curl_session_runs_as_written(service: Service, tmp_path: Path) -> None:
    # The same commands, pointed at this test's server and Python, run in a scratch folder.
    script = curl_session().replace("localhost:8000", service.url.removeprefix("http://"))
    script = script.replace(".venv/bin/python", sys.executable)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    out = done.stdout
    ranked = [line for line in out.splitlines() if line.startswith('{"rank"')]
    assert len(ranked) == 3 and '"name":"fashion_tops_2700"' in ranked[0]
    assert '"basis":"prior"' in out  # the dry run, before any job has run here
    assert "event: phase" in out and "event: epoch" in out and "event: end" in out
    result = next(line for line in out.splitlines() if line.startswith('{"test_accuracy"'))
    assert '"baseline":{' in result
    predicted = [line for line in out.splitlines() if " -> " in line]
    assert len(predicted) == 150
    with zipfile.ZipFile(tmp_path / "demo" / "model.zip") as bundle:  # the session's export
        assert {"model.onnx", "preprocessing.json", "labels.txt", "README.md", "predict.py"} <= set(
            bundle.namelist()
        )
    right = sum(line.split("_")[0] == line.split(" -> ")[1] for line in predicted)
    assert right >= 0.7 * len(predicted), f"{right} of 150 right"
    assert '"origin":"finetune"' in out
