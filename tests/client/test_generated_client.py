"""A client generated from the service's OpenAPI document by openapi-python-client (#25):
it generates without a warning, imports, and works against a live service, its answers
parsed into its typed models: an upload, a ranking, the rankings list, a PNG, a problem."""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.archives import fashion_mnist_images, image_folder_entries, zip_bytes
from tests.servers import ROOT, Service, free_port, serve, uvicorn_args

pytestmark = pytest.mark.system

GENERATOR = Path(sys.executable).parent / "openapi-python-client"
CONFIG = ROOT / "client" / "openapi-python-client.yaml"
KEY = "generated-client-key"

# Run in a fresh interpreter with only the generated package added to the path: what a user
# of the generated client writes, its answers reported as JSON for the test to check.
SCRIPT = """
import json, sys
from p2l_api_client import AuthenticatedClient
from p2l_api_client.api.datasets import datasets_upload
from p2l_api_client.api.rankings import rankings_create, rankings_list, rankings_plot
from p2l_api_client.models import (
    BodyDatasetsUpload, DatasetCreated, PageRankingSummary, Problem, RankingOut,
    RankingRequest, RankingSummary,
)
from p2l_api_client.types import File

url, key, archive = sys.argv[1:4]
client = AuthenticatedClient(base_url=url, token=key, prefix="", auth_header_name="X-API-Key")
with client, open(archive, "rb") as data:
    body = BodyDatasetsUpload(file=File(payload=data, file_name="garments.zip"), name="garments")
    dataset = datasets_upload.sync(client=client, body=body)
    assert isinstance(dataset, DatasetCreated), dataset
    ranking = rankings_create.sync(
        client=client, body=RankingRequest(target_dataset_id=dataset.id, top_k=3)
    )
    assert isinstance(ranking, RankingOut), ranking
    page = rankings_list.sync(client=client, target_dataset_id=dataset.id, page_size=10)
    assert isinstance(page, PageRankingSummary), page
    assert all(isinstance(item, RankingSummary) for item in page.items)
    plot = rankings_plot.sync(ranking.id, client=client)
    assert isinstance(plot, File), plot
    problem = rankings_list.sync(client=client, page_token="bm90LWlzc3VlZA")
    assert isinstance(problem, Problem), problem
print(json.dumps({
    "dataset": {"id": dataset.id, "num_images": dataset.num_images, "name": dataset.name},
    "ranking": ranking.to_dict(),
    "page": page.to_dict(),
    "created_at_type": type(page.items[0].created_at).__name__,
    "plot_head": plot.payload.read(8).hex(),
    "problem": problem.to_dict(),
}))
"""


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A service with an API key, the bundled zoo and no worker."""
    work = tmp_path_factory.mktemp("generated-client-service")
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2L_")}
    env |= {
        "P2L_DATA_DIR": str(work / "data"),
        "P2L_API_KEYS": KEY,
        "P2L_START_WORKER": "false",
        "PYTHONPATH": str(ROOT),
    }
    port = free_port()
    args = uvicorn_args(port, "--log-level", "warning")
    with serve(args, env, work / "server.log", port, cwd=work, timeout=180) as live:
        yield live


@pytest.fixture(scope="module")
def generated(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client generated from the live service's /openapi.json (a folder to import from)."""
    assert GENERATOR.exists(), f"no {GENERATOR}: install the test extra (pip install -e .[test])"
    work = tmp_path_factory.mktemp("generated-client")
    document = work / "openapi.json"
    document.write_text(httpx.get(f"{service.url}/openapi.json", timeout=30).text)
    # Its post-hooks format the code with ruff, which sits next to this interpreter too.
    env = os.environ | {"PATH": f"{GENERATOR.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [str(GENERATOR), "generate", "--path", str(document), "--config", str(CONFIG)]
    done = subprocess.run(
        [*command, "--output-path", str(work / "out")],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        timeout=300,
    )
    said = done.stdout + done.stderr
    assert done.returncode == 0, said
    # A construct of the document it cannot read is a warning, and a piece missing from
    # the client (an upload typed as text, an answer dropped): none may be left.
    assert "warning" not in said.lower() and "skipping" not in said.lower(), said
    return work / "out"


def test_the_generated_client_names_operations_for_what_they_do(generated: Path) -> None:
    package = generated / "p2l_api_client"
    modules = {path.stem for path in (package / "api" / "rankings").glob("*.py")}
    assert modules == {
        "__init__",
        "rankings_create",
        "rankings_list",
        "rankings_get",
        "rankings_delete",
        "rankings_plot",
    }
    assert (package / "api" / "datasets" / "datasets_upload.py").exists()
    # Every request field's description reaches the generated docstrings.
    listing = (package / "api" / "rankings" / "rankings_list.py").read_text()
    assert "Only the rankings made for this dataset" in listing


def test_the_generated_client_calls_the_service(
    generated: Path, service: Service, tmp_path: Path
) -> None:
    archive = tmp_path / "garments.zip"
    archive.write_bytes(zip_bytes(image_folder_entries(fashion_mnist_images(per_class=4))))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, service.url, KEY, str(archive)],
        capture_output=True,
        text=True,
        env=env | {"PYTHONPATH": str(generated)},
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answers: dict[str, Any] = json.loads(done.stdout)

    dataset, ranking, page = answers["dataset"], answers["ranking"], answers["page"]
    assert dataset["num_images"] == 20 and dataset["name"] == "garments"
    assert ranking["target_dataset_id"] == dataset["id"] and len(ranking["results"]) == 3
    (summary,) = page["items"]
    assert summary["id"] == ranking["id"] and summary["num_results"] == 3
    assert summary["top_source_id"] == ranking["results"][0]["source_id"]
    assert summary["top_score"] == ranking["results"][0]["score"]
    assert answers["created_at_type"] == "datetime"  # typed, not a string
    assert answers["plot_head"] == b"\x89PNG\r\n\x1a\n".hex()
    problem = answers["problem"]
    assert problem["status"] == 400 and "page_token" in problem["detail"]
