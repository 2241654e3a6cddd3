"""The Python client and the `p2l` command (client/), against real service processes.

The CLI runs from a fresh venv made by `pip install ./client` (no torch there) through the
whole flow: upload a folder, rank, fine-tune with a progress bar, predict, export, evaluate;
and the README's CLI session (client/examples/session.sh) runs as written. The library is
tested in this venv (client/ on sys.path): pagination, errors, API keys, event streams.
"""

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tests.archives import fashion_mnist_images
from tests.servers import ROOT, Service, free_port, serve, uvicorn_args

sys.path.insert(0, str(ROOT / "client"))

from p2l_client import (  # client/ is on sys.path, not installed in this venv
    Client,
    Event,
    InvalidInput,
    NotFound,
    P2LConnectionError,
    Unauthorized,
)
from p2l_client.cli import build_parser, pick, show_ranking
from p2l_client.cli import main as cli_main
from p2l_client.client import _archive_part, parse_sse, zip_folder
from p2l_client.progress import JobProgressView

TINY = ["--epochs", "2", "--schedule", "manual"]  # a fine-tune of seconds, not minutes
KEY = "client-test-key"
CLASSES = ("tshirt", "trouser", "pullover", "dress", "sneaker")  # tests/data's sample
EVENT_NAMES = {"job", "status", "phase", "epoch", "step", "end", "timeout"}


def service_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """This process's environment without any P2L_ setting, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2L_")}
    env |= {"P2L_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT), **settings}
    return env


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """An open service with its job worker and the bundled zoo (compact CNN sources)."""
    work = tmp_path_factory.mktemp("client-service")
    env = service_env(work / "data", P2L_START_WORKER="true")
    port = free_port()
    args = uvicorn_args(port, "--log-level", "warning")
    with serve(args, env, work / "server.log", port, cwd=work, timeout=180) as live:
        yield live


@pytest.fixture(scope="module")
def keyed_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A service with API keys, no worker, no bundled zoo, and streams idle after 1 s."""
    work = tmp_path_factory.mktemp("client-keyed")
    env = service_env(
        work / "data",
        P2L_API_KEYS=KEY,
        P2L_START_WORKER="false",
        P2L_IMPORT_BUNDLED_ZOO="false",
        P2L_EVENT_STREAM_IDLE_SECONDS="1",
    )
    port = free_port()
    args = uvicorn_args(port, "--log-level", "warning")
    with serve(args, env, work / "server.log", port, cwd=work, timeout=180) as live:
        yield live


@dataclass(frozen=True)
class Venv:
    """A fresh virtual environment with only p2l-client (and its dependencies) installed."""

    path: Path
    install_seconds: float

    @property
    def bin(self) -> Path:
        """Its scripts folder."""
        return self.path / "bin"


@pytest.fixture(scope="session")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """``python -m venv`` + ``pip install ./client``, once per test session.

    The client is copied first: pip builds in the source tree and would leave build/ and
    *.egg-info behind in the repository.
    """
    work = tmp_path_factory.mktemp("client-venv")
    source = shutil.copytree(
        ROOT / "client", work / "client", ignore=shutil.ignore_patterns("build", "*.egg-info")
    )
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True, timeout=300)
    pip = [str(work / "venv" / "bin" / "python"), "-m", "pip", "install", "-q", str(source)]
    installed = subprocess.run(pip, capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    venv = Venv(work / "venv", time.monotonic() - started)
    print(f"fresh client venv: created and installed in {venv.install_seconds:.1f} s")
    return venv


@dataclass
class Cli:
    """The fresh venv's `p2l`, pointed at a service."""

    venv: Venv
    url: str
    cwd: Path

    def env(self, **extra: str) -> dict[str, str]:
        """The environment a user of the client would have: the venv first on PATH."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("P2L_")}
        env.pop("PYTHONPATH", None)  # nothing of this repository's venv leaks in
        env["PATH"] = f"{self.venv.bin}{os.pathsep}{env.get('PATH', '')}"
        return env | {"P2L_URL": self.url, **extra}

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``p2l *args``, its output captured."""
        return subprocess.run(
            [str(self.venv.bin / "p2l"), *args],
            capture_output=True,
            text=True,
            env=self.env(),
            cwd=self.cwd,
            timeout=timeout,
        )

    def json(self, *args: str, timeout: float = 300) -> object:
        """``p2l --json *args``: exit 0, nothing but one JSON document on stdout."""
        done = self.run("--json", *args, timeout=timeout)
        assert done.returncode == 0, f"p2l {' '.join(args)}:\n{done.stderr[-3000:]}"
        return json.loads(done.stdout)


@pytest.fixture(scope="module")
def cli(client_venv: Venv, service: Service, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """The fresh venv's CLI against the open service."""
    return Cli(client_venv, service.url, tmp_path_factory.mktemp("cli"))


def write_class_folders(root: Path, images: dict[str, list[bytes]]) -> Path:
    """``root/<class>/<index>.png`` for every image."""
    for name, items in images.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(items):
            (root / name / f"{i:03d}.png").write_bytes(data)
    return root


@dataclass
class Flow:
    """What the CLI flow produced, step by step (checked by the tests that use it)."""

    folder: Path
    heldout: Path
    upload: dict
    ranking: dict
    human_ranking: str
    finetune: subprocess.CompletedProcess[str]
    job: dict


@pytest.fixture(scope="module")
def flow(cli: Cli) -> Flow:
    """Upload a folder of class folders, rank, fine-tune --source best --wait, via the CLI."""
    images = fashion_mnist_images(per_class=15)
    folder = write_class_folders(cli.cwd / "garments", {c: i[:12] for c, i in images.items()})
    heldout = write_class_folders(cli.cwd / "heldout", {c: i[12:] for c, i in images.items()})
    # What a Mac or an editor leaves in a folder; the client must skip it all.
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "dress" / ".hidden.png").write_bytes(images["dress"][0])
    (folder / "__MACOSX" / "dress").mkdir(parents=True)
    (folder / "__MACOSX" / "dress" / "._000.png").write_bytes(b"\0\5\26\7")
    upload = cli.json("datasets", "upload", str(folder), "--name", "garments")
    assert isinstance(upload, dict)
    ranking = cli.json("rank", upload["id"], "--top-k", "3")
    assert isinstance(ranking, dict)
    human = cli.run("rank", upload["id"], "--top-k", "3")
    assert human.returncode == 0, human.stderr
    finetune = cli.run(
        "--json", "finetune", upload["id"], "--source", "best", *TINY, "--wait", timeout=600
    )
    assert finetune.returncode == 0, finetune.stderr[-3000:]
    job = json.loads(finetune.stdout)
    return Flow(folder, heldout, upload, ranking, human.stdout, finetune, job)


# -- the fresh venv ------------------------------------------------------------------------


@pytest.mark.system
def test_client_installs_without_torch(client_venv: Venv) -> None:
    python = str(client_venv.bin / "python")
    probe = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True)
    assert probe.returncode != 0
    assert "No module named 'torch'" in probe.stderr
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format", "json"], capture_output=True, text=True
    )
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"p2l-client", "httpx", "rich"} <= names
    assert not names & {"torch", "fastapi", "numpy", "p2l-service"}, names
    shown = subprocess.run([str(client_venv.bin / "p2l"), "--help"], capture_output=True, text=True)
    assert shown.returncode == 0 and "usage: p2l" in shown.stdout
    for command in ("datasets", "rank", "finetune", "jobs", "predict", "export", "evaluate"):
        assert command in shown.stdout


# -- the CLI flow (fresh venv, open service) -----------------------------------------------


@pytest.mark.system
def test_cli_uploads_a_folder_skipping_hidden_files(flow: Flow) -> None:
    upload = flow.upload
    assert upload["name"] == "garments"
    assert upload["num_classes"] == 5 and upload["num_images"] == 60
    assert {c["name"]: c["count"] for c in upload["classes"]} == {name: 12 for name in CLASSES}
    # Hidden files and __MACOSX never left the machine: the service rejected nothing.
    assert upload["rejected_total"] == 0, upload["rejected"]


@pytest.mark.system
def test_cli_ranks_the_zoo(flow: Flow) -> None:
    results = flow.ranking["results"]
    assert [r["rank"] for r in results] == [1, 2, 3]
    assert results[0]["score"] >= results[1]["score"] >= results[2]["score"]
    assert "fashion" in results[0]["name"]  # a garment source for garments
    assert results[0]["name"] in flow.human_ranking and "size_term" in flow.human_ranking


@pytest.mark.system
def test_cli_ranks_in_two_stages(cli: Cli, flow: Flow) -> None:
    target = flow.upload["id"]
    human = cli.run("rank", target, "--top-k", "4", "--refine", "logme", "--refine-top", "3")
    assert human.returncode == 0, human.stderr
    assert "second stage: logme over the first 3, 3 forward passes" in human.stdout
    assert "refine_score" in human.stdout and "first_stage_rank" in human.stdout
    ranking = cli.json("rank", target, "--refine", "nce", "--refine-top", "2")
    assert ranking["refine"]["method"] == "nce"  # type: ignore[index]
    assert [r["refine_score"] is not None for r in ranking["results"][:3]] == [  # type: ignore[index]
        True, True, False,
    ]  # fmt: skip


@pytest.mark.system
def test_cli_ranks_with_the_learned_ranker(cli: Cli, flow: Flow) -> None:
    human = cli.run("rank", flow.upload["id"], "--top-k", "3", "--method", "learned")
    assert human.returncode == 0, human.stderr
    assert "p2l_rank" in human.stdout
    assert re.search(r"learned from (\d+) past targets: \1 of the bundled benchmark, 0 of this "
                     r"service \(0 fine-tunes\)", human.stdout), human.stdout  # fmt: skip
    assert "expected gain of " in human.stdout


@pytest.mark.system
def test_cli_races_the_shortlist_and_shows_the_calibration(cli: Cli, flow: Flow) -> None:
    target = flow.upload["id"]
    raced = cli.run(
        "finetune", target, "--source", "race", "--race-top", "2", "--race-budget", "2",
        "--schedule", "manual", "--epochs", "1", "--wait", "--no-progress",
    )  # fmt: skip
    assert raced.returncode == 0, raced.stderr
    assert "race: " in raced.stdout and "round 1 (1 epochs, val loss)" in raced.stdout
    assert "of fine-tuning every contestant" in raced.stdout
    shown = cli.run("calibration", "get")
    assert shown.returncode == 0, shown.stderr
    calibration = cli.json("calibration", "get")
    defaults = calibration["bundled_defaults"]  # type: ignore[index]
    assert (
        f"measure {defaults['measure']}, lambda {defaults['lambda']:g}: the bundled defaults"
        in shown.stdout
    )
    assert calibration["evidence"]["fine_tunes"] >= 1  # type: ignore[index]
    evidence = cli.json("calibration", "evidence", "--page-size", "1")
    assert isinstance(evidence, list)
    assert len(evidence) == calibration["evidence"]["fine_tunes"]  # type: ignore[index]
    newest, model = evidence[0], cli.json("models", "list", "--limit", "1")[0]  # type: ignore[index]
    assert newest["source_id"] == model["source_id"]  # the race's survivor
    listed = cli.run("calibration", "evidence", "--limit", "1")
    assert listed.returncode == 0 and newest["job_id"] in listed.stdout, listed.stderr


@pytest.mark.system
def test_cli_finetunes_the_best_source_with_progress(flow: Flow) -> None:
    job = flow.job
    assert job["status"] == "succeeded" and job["model_id"]
    assert job["params"]["source_id"] == flow.ranking["results"][0]["source_id"]
    progress = flow.finetune.stderr
    # stderr is not a terminal here: one line per epoch, and a last line at the end of the bar.
    assert "fine_tune epoch 1" in progress and "fine_tune epoch 2" in progress, progress
    assert "done: 2/2 epochs" in progress, progress
    assert job["progress"]["phase"] == "done" and job["progress"]["epochs_done"] == 2


@pytest.mark.system
def test_cli_predicts_held_out_images(cli: Cli, flow: Flow) -> None:
    files = sorted(flow.heldout.glob("*/*.png"))
    answer = cli.json("predict", flow.job["model_id"], *map(str, files), "--top-k", "2")
    assert isinstance(answer, dict)
    predictions = answer["predictions"]
    assert [p["filename"] for p in predictions] == [f.name for f in files]
    classes = {f.parent.name for f in files}
    assert all(len(p["top"]) == 2 and p["top"][0]["label"] in classes for p in predictions)
    human = cli.run("predict", flow.job["model_id"], str(files[0]))
    assert human.returncode == 0 and f"{files[0].name} -> " in human.stdout


@pytest.mark.system
def test_cli_lists_and_gets(cli: Cli, flow: Flow) -> None:
    model_id, target = flow.job["model_id"], flow.upload["id"]
    assert target in {d["id"] for d in cli.json("datasets", "list")}  # type: ignore[union-attr]
    assert cli.json("datasets", "get", target)["num_images"] == 60  # type: ignore[index]
    assert flow.job["id"] in {j["id"] for j in cli.json("jobs", "list")}  # type: ignore[union-attr]
    assert cli.json("jobs", "get", flow.job["id"])["status"] == "succeeded"  # type: ignore[index]
    assert model_id in {m["id"] for m in cli.json("models", "list")}  # type: ignore[union-attr]
    model = cli.json("models", "get", model_id)
    assert model["class_names"] == sorted(CLASSES)  # type: ignore[index]
    sources = cli.json("sources", "list", "--limit", "3")
    assert isinstance(sources, list) and len(sources) == 3
    field = cli.run("jobs", "get", flow.job["id"], "--field", "model_id")
    assert field.returncode == 0 and field.stdout == f"{model_id}\n"
    rankings = cli.json("rankings", "list", "--target", target)
    assert isinstance(rankings, list) and flow.ranking["id"] in {r["id"] for r in rankings}
    assert {r["target_dataset_id"] for r in rankings} == {target}
    assert [r["created_at"] for r in rankings] == sorted(
        (r["created_at"] for r in rankings), reverse=True
    )
    (summary,) = [r for r in rankings if r["id"] == flow.ranking["id"]]
    assert summary["num_results"] == 3
    assert summary["top_source_id"] == flow.ranking["results"][0]["source_id"]
    with Client(cli.url) as client:  # the library follows the pages
        assert [r["id"] for r in client.rankings.list(target, page_size=1)] == [
            r["id"] for r in rankings
        ]
    shown = cli.run("rankings", "list", "--limit", "2")
    assert shown.returncode == 0 and "top_source_name" in shown.stdout, shown.stderr
    whole = cli.json("rankings", "get", flow.ranking["id"])
    assert whole["results"] == flow.ranking["results"]  # type: ignore[index]


@pytest.mark.system
def test_cli_api_errors_exit_1_with_the_problem_on_stderr(cli: Cli) -> None:
    missing = cli.run("datasets", "get", "0" * 32)
    assert missing.returncode == 1 and missing.stdout == ""
    assert "404" in missing.stderr and "no dataset with id" in missing.stderr
    as_json = cli.run("--json", "models", "get", "0" * 32)
    assert as_json.returncode == 1 and as_json.stdout == ""
    problem = json.loads(as_json.stderr)
    assert problem["status"] == 404 and "no model with id" in problem["detail"]
    unreachable = cli.run("--url", f"http://127.0.0.1:{free_port()}", "--retries", "0", "health")
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr


@pytest.mark.system
def test_cli_exports_onnx_with_its_preprocessing(cli: Cli, flow: Flow, tmp_path: Path) -> None:
    target = cli.cwd / "model-onnx.zip"
    answer = cli.json("export", flow.job["model_id"], "--format", "onnx", "-o", str(target))
    assert answer["path"] == str(target) and target.stat().st_size == answer["bytes"]  # type: ignore[index]
    assert not list(cli.cwd.glob("*.part"))
    with zipfile.ZipFile(target) as archive:
        assert archive.namelist() == [
            "model.onnx", "preprocessing.json", "labels.txt", "predict.py", "README.md"
        ]  # fmt: skip
        spec = json.loads(archive.read("preprocessing.json"))
        assert archive.getinfo("model.onnx").file_size > 10_000
        labels = archive.read("labels.txt").decode().splitlines()
        assert flow.job["model_id"] in archive.read("README.md").decode()
    assert spec["class_names"] == sorted(CLASSES) == labels
    assert spec["layout"] == "NCHW" and len(spec["mean"]) == len(spec["std"])
    # The library streams it too, into a folder under the service's name: the same bytes,
    # since the service keeps the first export of a model and serves it again.
    with Client(cli.url) as p2l:
        saved = p2l.models.export(flow.job["model_id"], tmp_path, progress=True)
    assert saved == tmp_path / f"model-{flow.job['model_id']}-onnx.zip"
    assert saved.read_bytes() == target.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [saved.name]


@pytest.mark.system
def test_cli_evaluates_a_labelled_folder(cli: Cli, flow: Flow) -> None:
    report = cli.json("evaluate", flow.job["model_id"], str(flow.heldout))
    assert isinstance(report, dict)
    assert report["split"] == "archive" and report["images"] == 15
    assert set(report["per_class"]) == set(CLASSES)
    assert sum(map(sum, report["confusion_matrix"])) == 15
    assert 0 <= report["accuracy"] <= 1


@pytest.mark.system
def test_cli_dry_run_estimates_and_queues_nothing(cli: Cli, flow: Flow) -> None:
    jobs_before = cli.json("jobs", "list")
    estimate = cli.json("finetune", flow.upload["id"], "--dry-run", *TINY)
    assert isinstance(estimate, dict)
    assert estimate["seconds"] > 0 and estimate["epochs_planned"] == 2
    assert estimate["architecture"].startswith("compact_cnn")
    assert cli.json("jobs", "list") == jobs_before


@pytest.mark.system
def test_readme_cli_session_runs_as_written(cli: Cli) -> None:
    """client/examples/session.sh, the README's CLI twin of its curl session."""
    demo = cli.cwd / "demo"
    env = cli.env(DEMO=str(demo), PYTHON=str(Path(sys.executable)), FINETUNE_OPTIONS=" ".join(TINY))
    done = subprocess.run(
        ["sh", str(ROOT / "client" / "examples" / "session.sh")],
        capture_output=True,
        text=True,
        env=env,
        cwd=cli.cwd,
        timeout=900,
    )
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    out = done.stdout
    assert "fashion_tops_2700" in out  # the ranking's table (the README's figures)
    predicted = [line for line in out.splitlines() if " -> " in line]
    assert len(predicted) == 150
    right = sum(line.split("_")[0] == line.split(" -> ")[1].split()[0] for line in predicted)
    assert right >= 0.6 * len(predicted), f"{right} of 150 right"
    assert "done: " in done.stderr and "baseline epoch 2" in done.stderr, done.stderr
    assert (demo / "fashion-model.zip").is_file() and "tops-finetuned" in out
    # Names are handles: the session named its dataset and model and used only the names.
    assert cli.json("models", "get", "tops-classifier")["name"] == "tops-classifier"
    assert cli.json("sources", "get", "tops-finetuned")["origin"] == "finetune"


# -- the library (this venv) ---------------------------------------------------------------


@pytest.mark.system
def test_pagination_follows_every_page(service: Service) -> None:
    with Client(service.url) as client:
        tokens: list[str | None] = []
        client.http.event_hooks["request"].append(
            lambda r: tokens.append(r.url.params.get("page_token"))
        )
        listed = list(client.sources.list(page_size=4))
        pages = len(tokens)
        one_page = client.sources.page(page_size=200)
    ids = [s["id"] for s in listed]
    assert len(ids) == len(set(ids)) == len(one_page["items"]) >= 21  # the bundled zoo
    assert ids == [s["id"] for s in one_page["items"]]  # the same order: newest first
    assert one_page["next_page_token"] is None
    assert pages == -(-len(ids) // 4) >= 6  # ceil(n / 4) requests, no empty last page
    assert tokens[0] is None and all(tokens[1:pages])  # each next page by its token


@pytest.mark.system
def test_a_partial_iteration_fetches_only_the_pages_it_needs(service: Service) -> None:
    with Client(service.url) as client:
        requests: list[str] = []
        client.http.event_hooks["request"].append(lambda r: requests.append(str(r.url)))
        first_five = [s["id"] for s in islice(client.sources.list(page_size=2), 5)]
        assert len(first_five) == 5 and len(requests) == 3


@pytest.mark.system
def test_errors_carry_the_problem_detail(service: Service, tmp_path: Path) -> None:
    with Client(service.url) as client:
        with pytest.raises(NotFound) as missing:
            client.datasets.get("0" * 32)
        assert missing.value.status == 404 and missing.value.title
        assert "no dataset with id" in missing.value.detail
        assert missing.value.problem["instance"] == f"/v1/datasets/{'0' * 32}"
        # A folder of one class and a text file: 422, with the upload's rejected files.
        one = write_class_folders(tmp_path / "one", {"dress": fashion_mnist_images(3)["dress"]})
        (one / "dress" / "notes.txt").write_text("not an image")
        with pytest.raises(InvalidInput) as refused:
            client.datasets.upload(one)
        assert refused.value.status == 422 and "at least 2 class folders" in refused.value.detail
        assert refused.value.rejected_counts == {"not_an_image": 1}
        assert refused.value.rejected[0]["path"] == "dress/notes.txt"
        # A request the schema refuses: 422 with the validation errors.
        with pytest.raises(InvalidInput) as invalid:
            client.rankings.create("0" * 32, top_k=0)
        assert invalid.value.errors[0]["loc"] == ["body", "top_k"]
        assert "top_k" in str(invalid.value)
    nowhere = Client(f"http://127.0.0.1:{free_port()}", timeout=5, retries=0)
    with nowhere, pytest.raises(P2LConnectionError, match="cannot reach"):
        nowhere.health()


@pytest.mark.system
def test_api_keys_from_argument_environment_and_cli(
    keyed_service: Service,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("P2L_API_KEY", raising=False)
    monkeypatch.setenv("P2L_URL", keyed_service.url)
    folder = write_class_folders(tmp_path / "two", fashion_mnist_images(per_class=4))
    with Client() as anonymous:
        assert anonymous.url == keyed_service.url and anonymous.api_key is None
        for call in (anonymous.reference, lambda: anonymous.datasets.upload(folder)):
            with pytest.raises(Unauthorized) as refused:  # reads need the key too
                call()
            assert refused.value.status == 401
    with Client(api_key="wrong") as wrong, pytest.raises(Unauthorized):
        wrong.datasets.upload(folder)
    with Client(api_key=KEY) as keyed:
        created = keyed.datasets.upload(folder, name="keyed")
        assert created["num_images"] == 20
    monkeypatch.setenv("P2L_API_KEY", KEY)
    with Client() as from_env:
        assert from_env.api_key == KEY
        from_env.datasets.delete(created["id"])
    # The CLI: --api-key overrides the environment's (wrong) key.
    monkeypatch.setenv("P2L_API_KEY", "wrong")
    capsys.readouterr()
    assert cli_main(["datasets", "upload", str(folder)]) == 1
    assert "401" in capsys.readouterr().err
    assert cli_main(["datasets", "upload", str(folder), "--api-key", KEY, "--json"]) == 0
    uploaded = json.loads(capsys.readouterr().out)
    assert uploaded["name"] == "two" and uploaded["num_classes"] == 5


@pytest.mark.unit
def test_parse_sse_follows_the_event_stream_rules() -> None:
    text = (
        ": keep-alive comment\r\n"
        "event: phase\r\n"
        'data: {"phase": "fine_tune",\r\n'
        'data:  "epochs_planned": 2}\r\n'
        "\r\n"
        "id: 7\n"
        "data: plain text\n"
        "\n"
        "event: end\n"
        'data: {"id": "x", "status": "succeeded"}\n'
        "\n"
        "event: cut\n"
        "data: {}\n"  # no blank line: the stream ended mid-event
    )
    events = list(parse_sse(io.StringIO(text)))
    assert events == [
        Event("phase", {"phase": "fine_tune", "epochs_planned": 2}),
        Event("message", "plain text", "7"),
        Event("end", {"id": "x", "status": "succeeded"}, "7"),
    ]


@pytest.mark.system
def test_job_events_stream_parsed_to_spec(service: Service, flow: Flow) -> None:
    """A tiny real fine-tune's stream: job first, then phases and epochs, end last."""
    with Client(service.url) as client:
        job = client.finetunes.start(flow.upload["id"], "best", epochs=1, schedule="manual")
        events = list(client.jobs.events(job["id"]))
    names = [e.event for e in events]
    assert set(names) <= EVENT_NAMES, names
    assert names[0] == "job" and events[0].data["id"] == job["id"]
    assert names[-1] == "end" and events[-1].data["status"] == "succeeded"
    assert events[-1].data["progress"]["phase"] == "done"
    epochs = [e.data for e in events if e.event == "epoch"]
    assert [e["phase"] for e in epochs] == ["fine_tune"]
    assert epochs[0]["metrics"]["train_loss"] > 0 and epochs[0]["epochs_planned"] == 1
    phases = [e.data["phase"] for e in events if e.event == "phase"]
    assert "fine_tune" in phases and all(isinstance(p, str) for p in phases)


@pytest.mark.system
def test_wait_falls_back_to_polling_when_the_stream_times_out(keyed_service: Service) -> None:
    """No worker: the job stays queued, the stream times out after 1 s, wait() polls until
    the job is cancelled from elsewhere."""
    with Client(keyed_service.url, api_key=KEY) as client:
        images = fashion_mnist_images(per_class=4)
        target = client.datasets.upload(("t.zip", zip_bytes_of(images)), name="never-trained")
        bundled = ROOT / "app" / "zoo" / "bundled" / "sources"
        registered = client.sources.register(
            bundled / "fashion_tops_2700.safetensors",
            "compact_cnn",
            5,
            "fashion-tops",
            signature=bundled / "fashion_tops_2700.signature.safetensors",
        )
        job = client.finetunes.start(target["id"], registered["id"], epochs=1, schedule="manual")
        assert job["status"] == "queued"
        polled: list[str] = []
        client.http.event_hooks["request"].append(
            lambda r: polled.append(r.url.path) if r.url.path == f"/v1/jobs/{job['id']}" else None
        )

        def cancel() -> None:
            with Client(keyed_service.url, api_key=KEY) as other:
                other.jobs.cancel(job["id"])

        canceller = threading.Timer(3.0, cancel)
        canceller.start()
        try:
            final = client.jobs.wait(job["id"], progress=False, poll_interval=0.2, timeout=60)
        finally:
            canceller.cancel()
    assert final["status"] == "cancelled"
    assert len(polled) >= 2  # the stream ended with `timeout`, then GET /v1/jobs/{id} polls


def zip_bytes_of(images: dict[str, list[bytes]]) -> bytes:
    """A zip of ``<class>/<index>.png``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, items in images.items():
            for i, data in enumerate(items):
                archive.writestr(f"{name}/{i:03d}.png", data)
    return buffer.getvalue()


@pytest.mark.unit
def test_zip_folder_skips_hidden_files_and_refuses_an_empty_folder(tmp_path: Path) -> None:
    root = tmp_path / "set"
    (root / "a" / ".git").mkdir(parents=True)
    (root / "a" / "1.png").write_bytes(b"one")
    (root / "a" / ".git" / "HEAD").write_text("x")
    (root / "b").mkdir()
    (root / "b" / "2.png").write_bytes(b"two")
    (root / "b" / ".~lock.png").write_bytes(b"x")
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "x").write_bytes(b"x")
    with zipfile.ZipFile(zip_folder(root)) as archive:
        assert sorted(archive.namelist()) == ["a/1.png", "b/2.png"]
        assert archive.read("b/2.png") == b"two"
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    with pytest.raises(ValueError, match="no files"):
        zip_folder(tmp_path / "empty")


@pytest.mark.unit
def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    """`--help` on the command, every group and every subcommand."""
    parser = build_parser()
    paths: list[list[str]] = [[]]
    stack = [([], parser)]
    while stack:
        prefix, current = stack.pop()
        for action in current._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for name, sub in action.choices.items():  # type: ignore[attr-defined]
                    paths.append([*prefix, name])
                    stack.append(([*prefix, name], sub))
    assert ["finetune"] in paths and ["datasets", "upload"] in paths and ["jobs", "watch"] in paths
    for path in paths:
        with pytest.raises(SystemExit) as exited:
            cli_main([*path, "--help"])
        assert exited.value.code == 0
        shown = capsys.readouterr().out
        assert shown.startswith(f"usage: p2l {' '.join(path)}".rstrip()), path
        assert "--json" in shown and "--url" in shown, path


@pytest.mark.unit
def test_a_cut_download_leaves_no_partial_file(tmp_path: Path) -> None:
    """A stream cut mid-body (a real socket that closes early): no file, no ``.part``."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer_short() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n"
                b"Content-Type: application/octet-stream\r\n\r\n" + b"x" * 1000
            )

    server = threading.Thread(target=answer_short, daemon=True)
    server.start()
    try:
        with (
            Client(f"http://127.0.0.1:{port}") as client,
            pytest.raises(P2LConnectionError),
        ):
            client.download("/weights", tmp_path / "w.safetensors")
    finally:
        server.join(10)
        listener.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.unit
def test_a_download_shows_its_bar_on_a_terminal_only(tmp_path: Path) -> None:
    """A real socket serving 300 kB in pieces: the bar names the file and counts the bytes
    of the total; on a console that is no terminal (a log) nothing is printed."""
    body = os.urandom(300_000)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_twice() -> None:
        for _ in range(2):
            connection, _ = listener.accept()
            with connection:
                connection.recv(65536)
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\nConnection: close\r\n"
                    b'Content-Disposition: attachment; filename="model-x-onnx.zip"\r\n\r\n'
                )
                for start in range(0, len(body), 50_000):
                    connection.sendall(body[start : start + 50_000])

    server = threading.Thread(target=serve_twice, daemon=True)
    server.start()
    terminal, log = io.StringIO(), io.StringIO()
    try:
        with Client(f"http://127.0.0.1:{port}") as client:
            shown = Console(file=terminal, force_terminal=True, width=120)
            saved = client.download("/export", tmp_path, progress=True, console=shown)
            (tmp_path / "again").mkdir()
            quiet = Console(file=log, force_terminal=False, width=120)
            client.download("/export", tmp_path / "again", progress=True, console=quiet)
    finally:
        server.join(10)
        listener.close()
    assert saved == tmp_path / "model-x-onnx.zip" and saved.read_bytes() == body
    bar = terminal.getvalue()
    assert "model-x-onnx.zip" in bar and "300.0/300.0 kB" in bar, bar
    assert log.getvalue() == ""
    assert (tmp_path / "again" / "model-x-onnx.zip").read_bytes() == body


@pytest.mark.unit
def test_progress_prints_a_retried_jobs_epochs_again() -> None:
    """A retry starts the history over: the new attempt's epochs are printed as they come."""
    shown = io.StringIO()
    view = JobProgressView(Console(file=shown, force_terminal=False, width=200))

    def job(attempts: int, status: str, epochs: int) -> Any:
        history = [
            {"phase": "fine_tune", "epoch": e, "train_loss": 1.0 / e, "train_accuracy": 0.5}
            for e in range(1, epochs + 1)
        ]
        progress = {"phase": "fine_tune", "history": history, "epochs_done": epochs}
        return {"id": "j", "status": status, "attempts": attempts, "progress": progress}

    with view:
        view.job(job(1, "running", 2))
        view.job(job(1, "running", 3))
        view.job(job(2, "running", 1))  # the worker was lost: attempt 2 from epoch 1
        view.job(job(2, "running", 2))
    lines = [line for line in shown.getvalue().splitlines() if " epoch " in line]
    epochs = [line.split(" epoch ")[1].split()[0] for line in lines]
    assert epochs == ["1", "2", "3", "1", "2"], lines


@pytest.mark.unit
def test_field_past_the_end_of_a_list_is_a_clean_error() -> None:
    """``--field results.5.name`` on a shorter list: the KeyError main() reports, no traceback."""
    answer = {"results": [{"name": "a"}], "id": "r"}
    assert pick(answer, "results.0.name") == "a" and pick(answer, "results.-1.name") == "a"
    for path in ("results.5.name", "results.-2.name", "missing"):
        with pytest.raises(KeyError, match="--field"):
            pick(answer, path)


@pytest.mark.unit
def test_an_empty_ranking_shows_the_services_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    ranking = {
        "id": "r",
        "method": "p2l",
        "measure": "js",
        "target_dataset_id": "t",
        "results": [],
        "excluded": [],
        "warnings": ["the zoo is empty: register a source first"],
    }
    show_ranking(ranking)
    shown = capsys.readouterr().out
    assert "warning: the zoo is empty: register a source first" in shown
    assert "no source ranked" not in shown
    show_ranking({**ranking, "warnings": []})
    assert "no source ranked" in capsys.readouterr().out


@pytest.mark.unit
def test_archive_part_closes_what_it_opened(tmp_path: Path) -> None:
    """A folder's zip and an archive's file are closed after use; a caller's file is not."""
    (tmp_path / "set" / "a").mkdir(parents=True)
    (tmp_path / "set" / "a" / "1.png").write_bytes(b"one")
    (tmp_path / "set.zip").write_bytes(b"zip")
    for data in (tmp_path / "set", tmp_path / "set.zip"):
        with _archive_part(data) as (_, content):
            assert not content.closed
        assert content.closed
    mine = io.BytesIO(b"zip")
    with _archive_part(("mine.zip", mine)) as (name, content):
        assert name == "mine.zip" and content is mine
    assert not mine.closed
    with pytest.raises(FileNotFoundError), _archive_part(tmp_path / "nothing"):
        pass
