"""Projects, API keys, roles and the audit log from the Python client and the `p2l` command,
against a real service process whose only key at start is an operator key (P2L_API_KEYS)."""

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ROOT, Service, free_port, serve, uvicorn_args

sys.path.insert(0, str(ROOT / "client"))

from p2l_client import (  # client/ is on sys.path, not installed in this venv
    Client,
    Forbidden,
    NotFound,
    Unauthorized,
)
from p2l_client.cli import build_parser, quota_item
from p2l_client.cli import main as cli_main

OPERATOR = "projects-test-operator-key"
BUNDLED = ROOT / "app" / "zoo" / "bundled" / "sources"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A service with one operator key (P2L_API_KEYS), no worker and no bundled zoo."""
    work = tmp_path_factory.mktemp("projects-service")
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2L_")}
    env |= {
        "P2L_DATA_DIR": str(work / "data"),
        "PYTHONPATH": str(ROOT),
        "P2L_API_KEYS": OPERATOR,
        "P2L_START_WORKER": "false",
        "P2L_IMPORT_BUNDLED_ZOO": "false",
    }
    port = free_port()
    args = uvicorn_args(port, "--log-level", "warning")
    with serve(args, env, work / "server.log", port, cwd=work, timeout=180) as live:
        yield live


@pytest.fixture
def p2l(
    service: Service, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> "Run":
    """The `p2l` command in this process, pointed at the service with the operator key."""
    for name in ("P2L_API_KEY", "P2L_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("P2L_URL", service.url)
    monkeypatch.setenv("P2L_API_KEY", OPERATOR)
    return Run(capsys)


class Run:
    """Runs `p2l` in-process: its exit code, stdout and stderr."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = cli_main(list(args))
        shown = self.capsys.readouterr()
        return code, shown.out, shown.err

    def ok(self, *args: str) -> str:
        """stdout of a command that must succeed."""
        code, out, err = self(*args)
        assert code == 0, f"p2l {' '.join(args)}: {err}"
        return out

    def json(self, *args: str) -> object:
        """The JSON answer of ``p2l --json *args``."""
        return json.loads(self.ok("--json", *args))


@pytest.mark.system
def test_client_manages_projects_keys_and_reads_the_audit_log(service: Service) -> None:
    with Client(service.url, api_key=OPERATOR) as operator:
        me = operator.whoami()
        assert me["role"] == "operator" and me["project_name"] == "default"
        assert me["authenticated"] and me["key_id"] is None
        assert me["key_name"] and OPERATOR not in me["key_name"]  # a fingerprint

        project = operator.projects.create("team-lib", quotas={"max_active_jobs": 1})
        assert project["name"] == "team-lib" and not project["share_evidence"]
        assert project["quotas"]["max_active_jobs"] == 1
        assert project["id"] in {p["id"] for p in operator.projects.list(page_size=1)}
        assert operator.projects.get("team-lib")["id"] == project["id"]  # by name
        changed = operator.projects.update(
            project["id"], quotas={"max_active_jobs": None}, share_evidence=True
        )
        assert changed["quotas"]["max_active_jobs"] is None and changed["share_evidence"]
        assert changed["quotas"]["max_job_seconds"] == project["quotas"]["max_job_seconds"]
        admin_key = operator.keys.create("admin", "team-admin", project="team-lib")
        assert admin_key["key"].startswith(admin_key["prefix"]) and admin_key["role"] == "admin"

    with Client(service.url, api_key=admin_key["key"]) as admin:
        me = admin.whoami()
        assert (me["project_id"], me["project_name"]) == (project["id"], "team-lib")
        assert (me["role"], me["key_id"], me["key_name"]) == (
            "admin",
            admin_key["id"],
            "team-admin",
        )
        usage = admin.projects.usage()  # the key's own project
        assert usage["project_id"] == project["id"]
        assert (usage["active_jobs"], usage["datasets"], usage["storage_bytes"]) == (0, 0, 0)
        assert usage["quotas"]["max_active_jobs"] is None
        assert [p["name"] for p in admin.projects.list()] == ["team-lib"]  # only its own
        with pytest.raises(Forbidden) as refused:
            admin.projects.create("not-mine")
        assert refused.value.status == 403 and refused.value.required_role == "operator"

        viewer_key = admin.keys.create("viewer", "dashboard")
        with Client(service.url, api_key=viewer_key["key"]) as viewer:
            assert viewer.whoami()["role"] == "viewer"
            with pytest.raises(Forbidden):
                viewer.datasets.delete("0" * 32)  # viewers only read
            listed = {k["id"]: k for k in admin.keys.list()}
            assert set(listed) == {admin_key["id"], viewer_key["id"]}
            assert all("key" not in k for k in listed.values())

            # The audit log, newest first: the viewer's refused delete, then the key's
            # creation, by whom; never a key itself.
            entries = list(admin.audit.list(page_size=1))
            refused_delete, created = entries[0], entries[1]
            assert (refused_delete["action"], refused_delete["status"]) == (
                "DELETE /v1/datasets/{dataset_id}",
                403,
            )
            assert refused_delete["key_id"] == viewer_key["id"]
            assert created["action"] == "POST /v1/projects/{project_id}/keys"
            assert created["object_id"] == viewer_key["id"]
            assert created["key_id"] == admin_key["id"] and created["status"] == 201
            first = admin.audit.page(page_size=1)
            assert [e["id"] for e in first["items"]] == [entries[0]["id"]]
            with pytest.raises(Forbidden):
                admin.audit.page(all_projects=True)
            with Client(service.url, api_key=OPERATOR) as operator:
                everything = list(operator.audit.list(all_projects=True))
            assert "POST /v1/projects" in {e["action"] for e in everything}
            text = json.dumps([entries, everything])
            for key in (OPERATOR, admin_key["key"], viewer_key["key"]):
                assert key not in text

            admin.keys.revoke(viewer_key["id"])
            with pytest.raises(Unauthorized) as gone:
                viewer.whoami()
            assert gone.value.status == 401
        revoked = {k["id"]: k for k in admin.keys.list()}[viewer_key["id"]]
        assert revoked["revoked_at"] is not None

    # ?project=: an operator acts in any project; a project's key only in its own.
    with Client(service.url, api_key=OPERATOR, project="team-lib") as inside:
        assert inside.whoami()["project_id"] == project["id"]
        assert inside.current_project() == "team-lib"
    elsewhere = Client(service.url, api_key=admin_key["key"], project="default")
    with elsewhere, pytest.raises(NotFound):
        elsewhere.whoami()


@pytest.mark.system
def test_client_publishes_a_projects_source_into_the_shared_zoo(service: Service) -> None:
    with Client(service.url, api_key=OPERATOR) as operator:
        project = operator.projects.create("team-zoo")
        admin_key = operator.keys.create("admin", "zoo-admin", project=project["id"])
    with Client(service.url, api_key=admin_key["key"]) as admin:
        source = admin.sources.register(
            BUNDLED / "fashion_tops_2700.safetensors",
            "compact_cnn",
            5,
            "team-tops",
            signature=BUNDLED / "fashion_tops_2700.signature.safetensors",
        )
        assert source["project_id"] == project["id"] and source["shared"] is False
        with pytest.raises(Forbidden):
            admin.sources.publish(source["id"])
    with Client(service.url, api_key=OPERATOR) as operator:
        with pytest.raises(NotFound):  # a private source of another project
            operator.sources.get(source["id"])
        published = Client(service.url, api_key=OPERATOR, project="team-zoo")
        with published:
            assert published.sources.publish(source["id"])["shared"] is True
        assert operator.sources.get(source["id"])["shared"] is True  # every project sees it


@pytest.mark.system
def test_cli_manages_projects_keys_and_the_audit_log(p2l: Run) -> None:
    shown = p2l.ok("whoami")
    assert "operator of project default" in shown and OPERATOR not in shown

    project = p2l.json("projects", "create", "team-cli", "--quota", "max_active_jobs=2")
    assert isinstance(project, dict) and project["quotas"]["max_active_jobs"] == 2
    assert "team-cli" in p2l.ok("projects", "list")
    shown = p2l.ok("projects", "update", "team-cli", "--quota", "max-active-jobs=none")
    assert "max_active_jobs unlimited" in shown
    shown = p2l.ok("projects", "update", "team-cli", "--share-evidence")
    assert "team-cli: created" in shown and "shares its evidence" in shown
    assert p2l.json("projects", "show", "team-cli")["share_evidence"] is True  # type: ignore[index]

    # The key is printed once, on a line of its own, and said to be shown only now.
    shown = p2l.ok("--project", "team-cli", "keys", "create", "--role", "admin", "--name", "ci")
    assert "shown only this once" in shown
    admin_key = shown.strip().splitlines()[-1]
    assert admin_key.startswith("p2l_") and " " not in admin_key

    code, out, _ = p2l("whoami", "--api-key", admin_key)
    assert code == 0 and "key ci (" in out and "admin of project team-cli" in out
    whoami = p2l.json("whoami", "--api-key", admin_key)
    assert isinstance(whoami, dict) and whoami["project_name"] == "team-cli"

    shown = p2l.ok("projects", "usage", "--api-key", admin_key)
    assert "0 active job(s) (max unlimited)" in shown and "0 datasets" in shown
    viewer_key = p2l.ok("keys", "create", "--role", "viewer", "--name", "ro",
                        "--api-key", admin_key, "--field", "key").strip()  # fmt: skip
    assert viewer_key.startswith("p2l_")
    keys = p2l.json("keys", "list", "--api-key", admin_key)
    assert isinstance(keys, list) and {k["name"] for k in keys} == {"ci", "ro"}
    viewer_id = next(k["id"] for k in keys if k["name"] == "ro")
    assert viewer_id in p2l.ok("keys", "list", "--api-key", admin_key)

    # The audit log, newest first, with neither key in it (table or JSON).
    table = p2l.ok("audit", "--api-key", admin_key)
    assert "POST /v1/projects/{project_id}/keys" in table and viewer_id in table
    entries = p2l.json("audit", "--api-key", admin_key)
    assert isinstance(entries, list) and entries[0]["object_id"] == viewer_id
    assert [e["created_at"] for e in entries] == sorted(
        (e["created_at"] for e in entries), reverse=True
    )
    everything = p2l.ok("audit", "--all-projects")
    assert "project_id" in everything and "PATCH /v1/projects/{project_id}" in everything
    assert "POST /v1/projects" in {e["action"] for e in p2l.json("audit", "--all-projects")}  # type: ignore[union-attr]
    for text in (table, json.dumps(entries), everything):
        assert admin_key not in text and viewer_key not in text and OPERATOR not in text
    code, _, err = p2l("audit", "--all-projects", "--api-key", admin_key)
    assert code == 1 and "403" in err

    # A viewer may read, not write; revoked, it is refused.
    assert "viewer of project team-cli" in p2l.ok("whoami", "--api-key", viewer_key)
    assert "revoked key" in p2l.ok("keys", "revoke", viewer_id, "--api-key", admin_key)
    code, out, err = p2l("whoami", "--api-key", viewer_key)
    assert code == 1 and out == "" and "401" in err

    # Deleting a project needs --yes, and an operator.
    code, _, err = p2l("projects", "delete", "team-cli")
    assert code == 1 and "--yes" in err
    code, _, err = p2l("projects", "delete", "team-cli", "--yes", "--api-key", admin_key)
    assert code == 1 and "403" in err
    assert "deleted project team-cli" in p2l.ok("projects", "delete", "team-cli", "--yes")
    code, _, err = p2l("whoami", "--api-key", admin_key)  # its keys went with it
    assert code == 1 and "401" in err


@pytest.mark.system
def test_cli_publishes_a_source_and_acts_in_a_project(
    p2l: Run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    p2l.json("projects", "create", "team-pub")
    monkeypatch.setenv("P2L_PROJECT", "team-pub")  # every command acts in team-pub
    assert "operator of project team-pub" in p2l.ok("whoami")
    with Client(api_key=OPERATOR) as client:  # P2L_URL and P2L_PROJECT from the environment
        assert client.project == "team-pub"
        source = client.sources.register(
            BUNDLED / "fashion_tops_2700.safetensors",
            "compact_cnn",
            5,
            "pub-tops",
            signature=BUNDLED / "fashion_tops_2700.signature.safetensors",
        )
    shown = p2l.ok("sources", "publish", source["id"])
    assert "in the shared zoo" in shown
    assert p2l.json("--project", "default", "sources", "get", source["id"])["shared"] is True  # type: ignore[index]


@pytest.mark.unit
def test_quota_options_parse_and_every_new_command_has_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert quota_item("max_active_jobs=3") == ("max_active_jobs", 3)
    assert quota_item("max-job-seconds=90.5") == ("max_job_seconds", 90.5)
    assert quota_item("max_storage_bytes=none") == ("max_storage_bytes", None)
    for bad in ("max_active_jobs", "nonsense=3", "max_active_jobs=many"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"NAME=VALUE|not a number"):
            quota_item(bad)
    args = build_parser().parse_args(
        ["projects", "update", "p", "--quota", "max_active_jobs=1", "--quota",
         "requests_per_minute_per_key=none", "--no-share-evidence"]
    )  # fmt: skip
    assert args.quotas == {"max_active_jobs": 1, "requests_per_minute_per_key": None}
    assert args.share_evidence is False
    for path in (["whoami"], ["projects", "usage"], ["keys", "create"], ["audit"],
                 ["sources", "publish"]):  # fmt: skip
        with pytest.raises(SystemExit):
            cli_main([*path, "--help"])
        assert "--project" in capsys.readouterr().out
