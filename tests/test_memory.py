"""Work per image is bounded by its output size: a 1 x 300,000 image, uploaded or sent for
prediction, barely moves the peak memory of a real server process."""

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.archives import (
    bundled_target_images,
    fashion_mnist_images,
    image_folder_entries,
    tall_png,
    zip_bytes,
)
from tests.servers import ROOT, free_port, serve, uvicorn_args

MAX_GROWTH_MIB = 50


@dataclass
class Server:
    """A running uvicorn process serving the app, and a client for it."""

    client: httpx.Client
    pid: int

    def peak_mib(self) -> float:
        """The process's peak resident memory (VmHWM) since the last reset, in MiB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        assert match, status
        return int(match.group(1)) / 1024

    def reset_peak(self) -> float:
        """Restart the peak at the current resident memory (Linux >= 4.0); that, in MiB."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        return self.peak_mib()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``python -m uvicorn app.main:app`` over a fresh data dir, with its job worker."""
    work = tmp_path_factory.mktemp("memory")
    # Only this test's settings: none inherited from the environment or a .env file.
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2L_")}
    env |= {"P2L_DATA_DIR": str(work / "data"), "P2L_START_WORKER": "true"}
    env["PYTHONPATH"] = str(ROOT)
    port = free_port()
    args = uvicorn_args(port, "--log-level", "warning")
    # On exit uvicorn shuts down gracefully, the worker with it.
    with (
        serve(args, env, work / "server.log", port, cwd=work) as live,
        httpx.Client(base_url=live.url, timeout=120) as client,
    ):
        yield Server(client, live.process.pid)


def upload(client: httpx.Client, archive: bytes) -> dict:
    """POST an archive; the created dataset."""
    response = client.post("/v1/datasets", files={"file": ("data.zip", archive)})
    assert response.status_code == 201, response.text
    return response.json()


def predict(client: httpx.Client, model_id: str, images: list[bytes]) -> list[dict]:
    """POST images to a model; its predictions."""
    files = [("files", (f"{i}.png", image)) for i, image in enumerate(images)]
    response = client.post(f"/v1/models/{model_id}/predict", files=files)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def fine_tune(client: httpx.Client, dataset_id: str) -> str:
    """A short real fine-tuning job on the dataset, run by the worker; the model id."""
    body = {"target_dataset_id": dataset_id, "source_id": "best", "schedule": "manual"}
    response = client.post("/v1/finetunes", json={**body, "epochs": 1})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    deadline = time.monotonic() + 120
    while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"job still {job['status']}: {job['progress']}"
        time.sleep(0.2)
    assert job["status"] == "succeeded", job
    return str(job["model_id"])


def test_a_1_by_300000_image_costs_a_server_under_50_mib(server: Server) -> None:
    client = server.client
    garments = bundled_target_images("fashion")
    two_classes = {c: images[:5] for c, images in fashion_mnist_images(per_class=5).items()}
    two_classes = dict(list(two_classes.items())[:2])
    ordinary = [images[0] for images in bundled_target_images("fashion", part="test").values()]
    # Warm up every path measured below with ordinary images (imports, pools, arenas).
    model_id = fine_tune(client, upload(client, zip_bytes(image_folder_entries(garments)))["id"])
    predict(client, model_id, ordinary)
    upload(client, zip_bytes(image_folder_entries(two_classes)))

    strip = tall_png(300_000, 1)
    hostile = {**image_folder_entries(two_classes), f"{next(iter(two_classes))}/strip.png": strip}
    archive = zip_bytes(hostile)
    assert len(strip) < 2000 and len(archive) < 20_000
    # Each step is measured from its own start, so one cannot hide behind the other's peak.
    warm_peak = server.peak_mib()
    before = server.reset_peak()
    dataset = upload(client, archive)
    upload_growth = server.peak_mib() - before
    before = server.reset_peak()
    (prediction,) = predict(client, model_id, [strip])
    predict_growth = server.peak_mib() - before

    print(
        f"peak RSS {warm_peak:.0f} MiB after warm-up; peak above the start: "
        f"upload +{upload_growth:.1f} MiB, prediction +{predict_growth:.1f} MiB"
    )
    assert dataset["num_images"] == 11  # the strip is a valid image, and kept
    assert len(prediction["top"]) == 3
    assert upload_growth < MAX_GROWTH_MIB, f"upload: +{upload_growth:.0f} MiB"
    assert predict_growth < MAX_GROWTH_MIB, f"predict: +{predict_growth:.0f} MiB"
