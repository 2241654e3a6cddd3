"""Jobs on a real two-node Ray cluster (P2L_RUNNER=ray), leases and all, over PostgreSQL."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from tests.helpers import (
    HANDED_BACK,
    JOB_TIMEOUT,
    LEASE,
    eventually,
    get_job,
    model_folders,
    start_finetune,
    upload_garments,
    waiting_because,
)
from tests.servers import free_port

pytestmark = pytest.mark.system

ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]')")

RAY = str(Path(sys.executable).parent / "ray")
# Fast node-death detection, so a killed node's task is reported lost within seconds.
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_health_check_initial_delay_ms": "0",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "3",
}


@dataclass
class Cluster:
    """A local Ray head (no job resource) and worker nodes, each in its own session."""

    address: str
    temp_dir: Path
    nodes: list[subprocess.Popen] = field(default_factory=list)

    def add_node(self) -> subprocess.Popen:
        """Start a node offering the one ``p2l_node`` resource jobs ask for."""
        # --block keeps the node's processes in this process's group: killpg kills the node.
        node = subprocess.Popen(
            [RAY, "start", "--block", "--address", self.address, "--node-ip-address",
             "127.0.0.1", "--num-cpus", "1", "--resources", '{"p2l_node": 1}',
             "--dashboard-agent-listen-port", str(free_port())],
            env=os.environ | RAY_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        self.nodes.append(node)
        return node

    def kill_node(self, node: subprocess.Popen) -> None:
        """Kill a node at once, as a lost machine: its raylet, agents and workers."""
        doomed = node_processes(node.pid)
        for pid in doomed:
            os.kill(pid, signal.SIGKILL)
        node.wait(10)
        eventually(lambda: not set(doomed) & live_processes().keys(), 10, "the node exits")


def live_processes() -> dict[int, tuple[int, int]]:
    """Every live process: pid -> (parent pid, process group)."""
    processes = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] not in "ZX":
            processes[int(stat.parent.name)] = (int(fields[1]), int(fields[2]))
    return processes


def node_processes(pgid: int) -> list[int]:
    """A node's processes: its group (``ray start --block``) and their children (workers)."""
    processes = live_processes()
    found = {pid for pid, (_, group) in processes.items() if group == pgid}
    while more := {pid for pid, (parent, _) in processes.items() if parent in found} - found:
        found |= more  # Ray starts its workers in process groups of their own
    return sorted(found)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head node and one job node; everything Ray started is stopped at the end."""
    # Ray's socket paths must stay short: a folder directly under /tmp.
    temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    port = free_port()
    head = [RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
            "--num-cpus", "1", "--resources", '{"head": 1}', "--temp-dir", str(temp_dir),
            "--include-dashboard", "false", "--disable-usage-stats",
            "--ray-client-server-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port())]  # fmt: skip
    subprocess.run(head, env=os.environ | RAY_ENV, check=True, capture_output=True, timeout=120)
    running = Cluster(f"127.0.0.1:{port}", temp_dir)
    try:
        running.add_node()
        yield running
    finally:
        for node in running.nodes:
            if node.poll() is None:
                running.kill_node(node)
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def ray_client(
    cluster: Cluster, postgres_database: str, make_client: Callable[..., TestClient]
) -> TestClient:
    """A service dispatching its jobs to the cluster, over a fresh PostgreSQL database."""
    # make_client after the database: the service stops (and writes) before it is dropped.
    return make_client(
        runner="ray",
        ray_address=cluster.address,
        ray_resources={"p2l_node": 1},
        start_worker=True,
        database_url=postgres_database,
        job_lease_seconds=LEASE,
    )


def job_node_ids() -> set[str]:
    """The ids of the live nodes that offer the job resource."""
    return {n["NodeID"] for n in ray.nodes() if n["Alive"] and "p2l_node" in n["Resources"]}


def job_row(database_url: str, job_id: str) -> dict:
    """The job's row, read straight from the database (the service may be stopped), with
    ``holder_pid``: the process of the worker that holds it, from its heartbeat row."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            query = text(
                "SELECT jobs.*, workers.pid AS holder_pid FROM jobs "
                "LEFT JOIN workers ON workers.id = jobs.worker_id WHERE jobs.id = :id"
            )
            return dict(connection.execute(query, {"id": job_id}).mappings().one())
    finally:
        engine.dispose()


def ran_on(record: dict, node_id: str) -> bool:
    """The job's (last) worker was a Ray task on this node."""
    return (record["worker_id"] or "").startswith(f"ray-{node_id[:12]}-")


def test_a_finetune_runs_as_a_ray_task_on_the_node_with_the_resource(
    cluster: Cluster, ray_client: TestClient, data_dir: Path
) -> None:
    target_id = upload_garments(ray_client)
    job_id = start_finetune(ray_client, target_id, epochs=2)
    record = eventually(
        lambda: (r := get_job(ray_client, job_id))["status"] not in ("queued", "running") and r,
        JOB_TIMEOUT,
        "the job ends",
    )
    assert isinstance(record, dict)
    assert record["status"] == "succeeded", record
    assert record["attempts"] == 1
    (node_id,) = job_node_ids()  # the head offers no p2l_node: never there
    assert ran_on(record, node_id), (record["worker_id"], node_id)
    models = [m["id"] for m in ray_client.get("/v1/models").json()["items"]]
    assert models == [record["model_id"]]
    assert model_folders(data_dir) == {record["model_id"]}


def test_a_job_whose_node_dies_is_requeued_and_runs_once_on_another_node(
    cluster: Cluster, ray_client: TestClient, data_dir: Path, postgres_database: str
) -> None:
    target_id = upload_garments(ray_client)
    long_job = start_finetune(ray_client, target_id, epochs=1000)
    first = eventually(
        lambda: (
            (r := get_job(ray_client, long_job))["status"] == "running"
            and r["progress"]["epoch"]
            and r
        ),
        JOB_TIMEOUT,
        "the job trains",
    )
    assert isinstance(first, dict) and first["attempts"] == 1
    (old_node,) = job_node_ids()
    assert ran_on(first, old_node)

    # The run is a process of that node: killing the node ends it (checked in kill_node).
    run_pid = job_row(postgres_database, long_job)["holder_pid"]
    assert run_pid in node_processes(cluster.nodes[-1].pid)
    cluster.kill_node(cluster.nodes[-1])
    cluster.add_node()
    # The lease expires, the API's reaper re-queues the job (the run counted), and the
    # dispatcher hands it to a task on the new node: a second run, never alongside the first.
    second = eventually(
        lambda: (
            (r := get_job(ray_client, long_job))["attempts"] == 2 and r["progress"]["epoch"] and r
        ),
        JOB_TIMEOUT,
        "the job trains again",
    )
    assert isinstance(second, dict)
    assert second["status"] == "running", second
    (new_node,) = job_node_ids()  # the killed node is known dead by now
    assert new_node != old_node and ran_on(second, new_node), second
    assert second["error"] is None, second  # the first run's end is no error of this one

    # The second run answers to the job table like the first: cancel it there.
    assert ray_client.post(f"/v1/jobs/{long_job}/cancel").status_code == 200
    ended = eventually(
        lambda: (r := get_job(ray_client, long_job))["status"] != "running" and r, 60, "it stops"
    )
    assert isinstance(ended, dict)
    assert ended["status"] == "cancelled" and ended["attempts"] == 2, ended
    assert ended["worker_id"] == second["worker_id"]

    # The cluster keeps serving: the next job runs once, on the new node, with one model.
    quick_job = start_finetune(ray_client, target_id, epochs=1)
    quick = eventually(
        lambda: (r := get_job(ray_client, quick_job))["status"] not in ("queued", "running") and r,
        JOB_TIMEOUT,
        "the next job ends",
    )
    assert isinstance(quick, dict)
    assert quick["status"] == "succeeded" and quick["attempts"] == 1, quick
    assert ran_on(quick, new_node)
    assert model_folders(data_dir) == {quick["model_id"]}


def test_stopping_the_service_hands_its_running_job_back_and_ends_the_task(
    cluster: Cluster, ray_client: TestClient, postgres_database: str
) -> None:
    target_id = upload_garments(ray_client)
    long_job = start_finetune(ray_client, target_id, epochs=1000)
    eventually(
        lambda: get_job(ray_client, long_job)["progress"]["epoch"], JOB_TIMEOUT, "the job trains"
    )
    task_pid = job_row(postgres_database, long_job)["holder_pid"]

    ray_client.__exit__(None, None, None)  # the service stops (a deploy, say)
    row = job_row(postgres_database, long_job)
    assert (row["status"], row["attempts"], row["worker_id"]) == ("queued", 0, None), row
    assert row["error"] is None, row
    assert row["progress"]["label"].startswith(waiting_because(HANDED_BACK)[:-1]), row
    eventually(lambda: task_pid not in live_processes(), 30, "the Ray task is cancelled")
