"""The scaled topology without containers: PostgreSQL, an S3 server, a two-node Ray cluster,
and two API processes that share nothing else (each its own data dir).

What docker/compose.yaml's `scaled` profile runs, tested here with the machine's PostgreSQL,
moto's S3 server and a local Ray cluster.
"""

import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from tests.archives import bundled_target_images, image_folder_entries, zip_bytes
from tests.helpers import (
    eventually,
    get_job,
    start_finetune,
    wait_for_job,
)
from tests.jobs.test_ray_runner import RAY_ENV, Cluster, cluster, job_node_ids, ran_on, ray  # noqa: F401
from tests.servers import free_port, serve, uvicorn_args
from tests.storage.test_object_store import BUCKET, endpoint  # noqa: F401 (fixture)

pytestmark = pytest.mark.system

LEASE = "2"


@pytest.fixture
def apis(
    endpoint: str,  # noqa: F811 (first: the Ray nodes inherit its AWS_* credentials)
    cluster: Cluster,  # noqa: F811
    postgres_database: str,
    tmp_path: Path,
) -> Iterator[list[httpx.Client]]:
    """Two API processes on one database, one bucket prefix and one Ray cluster."""
    common = {
        **os.environ,
        **RAY_ENV,
        "P2L_DATABASE_URL": postgres_database,
        "P2L_STORE_URL": f"s3://{BUCKET}/{uuid.uuid4().hex}",
        "P2L_S3_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "P2L_RUNNER": "ray",
        "P2L_RAY_ADDRESS": cluster.address,
        "P2L_RAY_RESOURCES": '{"p2l_node": 1}',
        "P2L_JOB_LEASE_SECONDS": LEASE,
    }
    ray.init(address=cluster.address, log_to_driver=False)  # to ask the cluster which node
    with ExitStack() as stack:
        stack.callback(ray.shutdown)
        clients = []
        for i in range(2):
            port = free_port()
            env = {**common, "P2L_DATA_DIR": str(tmp_path / f"api{i}")}
            server = stack.enter_context(
                serve(uvicorn_args(port), env, tmp_path / f"api{i}.log", port, timeout=180)
            )
            clients.append(stack.enter_context(httpx.Client(base_url=server.url, timeout=120)))
        yield clients


def test_two_replicas_one_bucket_one_ray_cluster(
    apis: list[httpx.Client],
    cluster: Cluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    api1, api2 = apis
    # Upload through API 1; its files live in the bucket, not in API 2's data dir.
    archive = zip_bytes(image_folder_entries(bundled_target_images("fashion")))
    uploaded = api1.post("/v1/datasets", files={"file": ("garments.zip", archive)})
    assert uploaded.status_code == 201, uploaded.text
    target = uploaded.json()["id"]
    assert not (tmp_path / "api0" / "datasets").exists()

    # Register a source through API 2, signed from that dataset (read from the bucket).
    zoo = api2.get("/v1/sources", params={"page_size": 200}).json()["items"]
    base = next(s for s in zoo if s["name"] == "fashion_9k")
    weights = api2.get(f"/v1/sources/{base['id']}/weights").content
    form = {"architecture": base["architecture"], "num_classes": str(base["num_classes"]),
            "name": "team-garments", "dataset_id": target}  # fmt: skip
    registered = api2.post("/v1/sources", data=form, files={"weights": ("w.st", weights)})
    assert registered.status_code == 201, registered.text
    source = registered.json()["id"]

    # Rank through API 1: it sees API 2's source, at distance 0 from its own dataset.
    ranking = api1.post("/v1/rankings", json={"target_dataset_id": target}).json()
    nearest = min(ranking["results"], key=lambda r: r["distance"])
    assert nearest["source_id"] == source

    # Fine-tune through API 2 on the Ray node; predict through API 1.
    first = start_finetune(api2, target, epochs=2, source=source)
    done = wait_for_job(api1, first)
    assert isinstance(done, dict) and done["status"] == "succeeded", done
    (node,) = job_node_ids()
    assert ran_on(done, node) and done["attempts"] == 1
    held_back = bundled_target_images("fashion", part="test")
    files = [("files", (f"{c}.png", images[0])) for c, images in held_back.items()]
    predicted = api1.post(f"/v1/models/{done['model_id']}/predict", files=files)
    assert predicted.status_code == 200, predicted.text
    assert len(predicted.json()["predictions"]) == len(held_back)

    # The Ray node dies mid-job: the job is re-run once on a new node, never twice at once.
    long = start_finetune(api2, target, epochs=1000, source=source)
    eventually(lambda: get_job(api1, long)["progress"]["epoch"], what="the long job trains")
    cluster.kill_node(cluster.nodes[-1])
    cluster.add_node()
    again = eventually(
        lambda: (r := get_job(api1, long))["attempts"] == 2 and r["progress"]["epoch"] and r,
        what="the job trains again",
    )
    assert isinstance(again, dict) and again["status"] == "running", again
    assert again["error"] is None  # the first run's end is no error of this one
    assert api2.post(f"/v1/jobs/{long}/cancel").status_code == 200
    ended = eventually(
        lambda: (r := get_job(api1, long))["status"] != "running" and r, 60, "it stops"
    )
    assert isinstance(ended, dict) and ended["status"] == "cancelled", ended
    models = api1.get("/v1/models").json()["items"]
    assert [m["id"] for m in models] == [done["model_id"]]  # nothing from the cancelled job
