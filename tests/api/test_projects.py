"""Teams (#24): projects, keys with roles, isolation, the shared zoo, quotas, the audit log.

Defects of the one-key service, each a test here:
1. key B could read, delete and cancel everything key A made (no owner on any object);
2. `GET /v1/models/{id}/misclassified/{k}` served users' images without any key;
3. a source whose uploaded signature claimed 10^9 images was first for nearly every target,
   for every user of the service;
4. nothing bounded what one key could take (active jobs, job length, event streams).
"""

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.models import Ranking
from app.p2l.signature import DatasetSignature
from app.services.rankings import prune_rankings
from tests.archives import fashion_mnist_images, image_folder_entries, zip_bytes
from tests.helpers import PROBLEM, run_queued_jobs

pytestmark = pytest.mark.api

OPERATOR = "operator-key"
SOME_ID = "0123456789abcdef0123456789abcdef"


def archive(per_class: int = 8) -> dict[str, tuple[str, bytes]]:
    return {"file": ("d.zip", zip_bytes(image_folder_entries(fashion_mnist_images(per_class))))}


def key_of(client: TestClient, project: str, role: str, name: str | None = None) -> str:
    made = client.post(
        f"/v1/projects/{project}/keys",
        json={"role": role, "name": name or f"{project}-{role}"},
        headers={"X-API-Key": OPERATOR},
    )
    assert made.status_code == 201, made.text
    return str(made.json()["key"])


@dataclass
class Team:
    """A project with a key of each role, and what its member made."""

    name: str
    keys: dict[str, str]
    objects: dict[str, str]

    def as_(self, role: str) -> dict[str, str]:
        return {"X-API-Key": self.keys[role]}


@pytest.fixture
def service(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(api_keys=OPERATOR)


def make_team(client: TestClient, name: str, with_objects: bool = True) -> Team:
    created = client.post("/v1/projects", json={"name": name}, headers={"X-API-Key": OPERATOR})
    assert created.status_code == 201, created.text
    keys = {role: key_of(client, name, role) for role in ("viewer", "member", "admin")}
    team = Team(name, keys, {})
    if not with_objects:
        return team
    member = team.as_("member")
    dataset = client.post("/v1/datasets", files=archive(), headers=member).json()["id"]
    shared = client.get("/v1/sources", headers=member).json()["items"][0]
    weights = client.get(f"/v1/sources/{shared['id']}/weights", headers=member).content
    source = client.post(
        "/v1/sources",
        files={"weights": ("w.safetensors", weights)},
        data={
            "name": f"{name}-private",
            "architecture": shared["architecture"],
            "num_classes": str(shared["num_classes"]),
            "dataset_id": dataset,
        },
        headers=member,
    )
    assert source.status_code == 201, source.text
    ranking = client.post("/v1/rankings", json={"target_dataset_id": dataset}, headers=member)
    assert ranking.status_code == 201, ranking.text
    finetune = {
        "target_dataset_id": dataset,
        "source_id": source.json()["id"],
        "schedule": "manual",
        "epochs": 1,
        "patience": None,
    }
    job = client.post("/v1/finetunes", json=finetune, headers=member)
    assert job.status_code == 202, job.text
    run_queued_jobs(client)
    done = client.get(f"/v1/jobs/{job.json()['id']}", headers=member).json()
    assert done["status"] == "succeeded", done
    queued = client.post("/v1/finetunes", json=finetune, headers=member).json()["id"]
    team.objects = {
        "datasets": dataset,
        "sources": source.json()["id"],
        "rankings": ranking.json()["id"],
        "jobs": done["id"],
        "queued_job": queued,
        "models": done["model_id"],
    }
    return team


def test_another_projects_objects_are_not_found_for_any_key(service: TestClient) -> None:
    # Defect 1: key B could list, read, rank with, fine-tune from, delete and cancel A's work.
    a, b = make_team(service, "team-a"), make_team(service, "team-b", with_objects=False)
    objects = a.objects
    for role in ("viewer", "member", "admin"):
        headers = b.as_(role)
        for kind in ("datasets", "sources", "jobs", "models"):
            listed = service.get(f"/v1/{kind}", params={"page_size": 200}, headers=headers)
            assert listed.status_code == 200
            assert objects[kind] not in {item["id"] for item in listed.json()["items"]}, kind
        for kind in ("datasets", "sources", "rankings", "jobs", "models"):
            read = service.get(f"/v1/{kind}/{objects[kind]}", headers=headers)
            assert read.status_code == 404, (role, kind)
            assert read.headers["content-type"] == PROBLEM
        for path in (
            f"/v1/datasets/{objects['datasets']}/signature",
            f"/v1/sources/{objects['sources']}/weights",
            f"/v1/models/{objects['models']}/misclassified/0",
            f"/v1/models/{objects['models']}/export?format=onnx",
            f"/v1/rankings/{objects['rankings']}/plot.png",
            f"/v1/jobs/{objects['jobs']}/events",
        ):
            assert service.get(path, headers=headers).status_code == 404, (role, path)
    member = b.as_("member")
    ranked = service.post(
        "/v1/rankings", json={"target_dataset_id": objects["datasets"]}, headers=member
    )
    assert ranked.status_code == 404
    own = service.post("/v1/datasets", files=archive(), headers=member).json()["id"]
    with_source = service.post(
        "/v1/rankings",
        json={"target_dataset_id": own, "source_ids": [objects["sources"]]},
        headers=member,
    )
    assert with_source.status_code == 422 and objects["sources"] in with_source.json()["detail"]
    # B's ranking and "best" fine-tune never see A's private source.
    ranking = service.post("/v1/rankings", json={"target_dataset_id": own}, headers=member)
    assert objects["sources"] not in {r["source_id"] for r in ranking.json()["results"]}
    from_a = {"target_dataset_id": own, "source_id": objects["sources"], "epochs": 1}
    assert service.post("/v1/finetunes", json=from_a, headers=member).status_code == 404
    for method, path in (
        ("DELETE", f"/v1/datasets/{objects['datasets']}"),
        ("DELETE", f"/v1/sources/{objects['sources']}"),
        ("DELETE", f"/v1/rankings/{objects['rankings']}"),
        ("DELETE", f"/v1/models/{objects['models']}"),
        ("DELETE", f"/v1/jobs/{objects['jobs']}"),
        ("POST", f"/v1/jobs/{objects['queued_job']}/cancel"),
        ("POST", f"/v1/models/{objects['models']}/register"),
    ):
        assert service.request(method, path, headers=member).status_code == 404, path
    # Everything of A is still there, for A.
    for kind in ("datasets", "sources", "rankings", "jobs", "models"):
        assert service.get(f"/v1/{kind}/{objects[kind]}", headers=a.as_("viewer")).is_success
    queued = service.get(f"/v1/jobs/{objects['queued_job']}", headers=a.as_("viewer")).json()
    assert queued["status"] == "queued"


def test_roles_limit_what_a_key_may_do_in_its_project(service: TestClient) -> None:
    a = make_team(service, "team-a")
    viewer, member, admin = a.as_("viewer"), a.as_("member"), a.as_("admin")
    paths = service.get("/openapi.json").json()["paths"]
    for kind, object_id in a.objects.items():
        if kind != "queued_job":
            assert service.get(f"/v1/{kind}/{object_id}", headers=viewer).status_code == 200
    writes = [
        (m.upper(), p)
        for p, ops in paths.items()
        for m in ops
        if p.startswith("/v1/") and m in ("post", "delete", "patch")
    ]
    assert len(writes) > 15
    for method, template in writes:
        path = template.replace("{project_id}", "team-a").replace("{key_id}", SOME_ID)
        for name in ("dataset_id", "source_id", "model_id", "job_id", "ranking_id"):
            path = path.replace("{" + name + "}", a.objects.get(name[:-3] + "s", SOME_ID))
        refused = service.request(method, path, headers=viewer)
        assert refused.status_code == 403, (method, template, refused.status_code)
        assert refused.headers["content-type"] == PROBLEM
        assert refused.json()["required_role"] == "member"
    # A member works in the project but does not manage it.
    new_key = {"role": "viewer", "name": "x"}
    assert service.post("/v1/projects/team-a/keys", json=new_key, headers=member).status_code == 403
    assert service.get("/v1/projects/team-a/usage", headers=member).status_code == 403
    assert service.get("/v1/audit", headers=member).status_code == 403
    assert service.post("/v1/calibration/reset", headers=member).status_code == 403
    # An admin manages keys up to its own role, reads usage and audit; not the service.
    made = service.post("/v1/projects/team-a/keys", json=new_key, headers=admin)
    assert made.status_code == 201 and made.json()["key"].startswith("p2l_")
    operator_key = {"role": "operator", "name": "y"}
    refused = service.post("/v1/projects/team-a/keys", json=operator_key, headers=admin)
    assert refused.status_code == 403
    assert service.post("/v1/projects", json={"name": "c"}, headers=admin).status_code == 403
    quotas = {"quotas": {"max_active_jobs": 100}}
    assert service.patch("/v1/projects/team-a", json=quotas, headers=admin).status_code == 403
    assert service.get("/v1/projects/default", headers=admin).status_code == 404
    usage = service.get("/v1/projects/team-a/usage", headers=admin).json()
    assert usage["datasets"] == 1 and usage["models"] == 1 and usage["storage_bytes"] > 0
    # No key at all: 401 everywhere under /v1.
    for path in ("/v1/whoami", "/v1/datasets", f"/v1/models/{a.objects['models']}"):
        assert service.get(path).status_code == 401


def test_keys_are_hashed_shown_once_expire_and_revoke_at_once(service: TestClient) -> None:
    a = make_team(service, "team-a", with_objects=False)
    admin = a.as_("admin")
    made = service.post(
        "/v1/projects/team-a/keys", json={"role": "member", "name": "ci"}, headers=admin
    ).json()
    key = made["key"]
    who = service.get("/v1/whoami", headers={"X-API-Key": key}).json()
    assert who == {
        "project_id": made["project_id"],
        "project_name": "team-a",
        "role": "member",
        "key_id": made["id"],
        "key_name": "ci",
        "authenticated": True,
    }
    listed = service.get("/v1/projects/team-a/keys", headers=admin).json()["items"]
    row = next(k for k in listed if k["id"] == made["id"])
    assert "key" not in row and row["last_used_at"] is not None
    state = service.app.state.service  # type: ignore[attr-defined]
    with state.engine.connect() as connection:
        stored = connection.exec_driver_sql("SELECT key_sha256 FROM api_keys").scalars().all()
    assert key not in stored and all(len(digest) == 64 for digest in stored)
    revoked = service.delete(f"/v1/projects/team-a/keys/{made['id']}", headers=admin)
    assert revoked.status_code == 204
    refused = service.get("/v1/whoami", headers={"X-API-Key": key})
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "ApiKey"
    with state.engine.begin() as connection:  # a key whose time is up
        connection.exec_driver_sql(
            "UPDATE api_keys SET expires_at = '2020-01-01 00:00:00' WHERE name = 'team-a-viewer'"
        )
    expired = service.get("/v1/whoami", headers=a.as_("viewer"))
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]


def test_operators_act_in_the_project_a_request_names(service: TestClient) -> None:
    make_team(service, "team-a", with_objects=False)
    operator = {"X-API-Key": OPERATOR}
    assert service.get("/v1/whoami", headers=operator).json()["project_name"] == "default"
    there = service.get("/v1/whoami", params={"project": "team-a"}, headers=operator).json()
    assert there["project_name"] == "team-a" and there["role"] == "operator"
    made = service.post(
        "/v1/datasets", params={"project": "team-a"}, files=archive(), headers=operator
    ).json()["id"]
    assert service.get(f"/v1/datasets/{made}", headers=operator).status_code == 404
    assert service.get(f"/v1/datasets/{made}?project=team-a", headers=operator).status_code == 200
    assert service.get("/v1/whoami?project=nope", headers=operator).status_code == 404
    projects = service.get("/v1/projects", headers=operator).json()["items"]
    assert {p["name"] for p in projects} == {"default", "team-a"}


def test_an_open_service_is_one_trusted_default_project(client: TestClient) -> None:
    who = client.get("/v1/whoami").json()
    assert who["project_name"] == "default" and who["role"] == "operator"
    assert not who["authenticated"]
    assert client.post("/v1/datasets", files=archive()).status_code == 201
    # The first key made closes the service.
    project = client.get("/v1/projects").json()["items"][0]["id"]
    key = client.post(
        f"/v1/projects/{project}/keys", json={"role": "admin", "name": "first"}
    ).json()["key"]
    assert client.get("/v1/datasets").status_code == 401
    assert client.get("/v1/datasets", headers={"X-API-Key": key}).status_code == 200


def test_a_claimed_image_count_is_marked_capped_and_private(service: TestClient) -> None:
    # Defect 3: a signature claiming 10^9 images ranked first for 27 of 29 targets, for all.
    a, b = make_team(service, "team-a", False), make_team(service, "team-b", False)
    member_a, member_b = a.as_("member"), b.as_("member")
    dataset = service.post("/v1/datasets", files=archive(), headers=member_a).json()["id"]
    signature = service.get(
        f"/v1/datasets/{dataset}/signature?format=safetensors", headers=member_a
    ).content
    honest = DatasetSignature.from_bytes(signature)
    counts = honest.class_counts * 0 + 10**9 // len(honest.class_counts)
    claimed = replace(honest, class_counts=counts)
    shared = service.get("/v1/sources", headers=member_a).json()["items"][0]
    weights = service.get(f"/v1/sources/{shared['id']}/weights", headers=member_a).content
    source = service.post(
        "/v1/sources",
        files={"weights": ("w", weights), "signature": ("s", claimed.to_bytes())},
        data={
            "name": "claims-a-billion",
            "architecture": shared["architecture"],
            "num_classes": str(shared["num_classes"]),
        },
        headers=member_a,
    ).json()
    assert source["image_counts"] == "claimed" and not source["shared"]
    ranking = service.post("/v1/rankings", json={"target_dataset_id": dataset}, headers=member_a)
    results = {r["source_id"]: r for r in ranking.json()["results"]}
    mine = results[source["id"]]
    lam = ranking.json()["params"]["lambda"]
    cap = service.app.state.service.settings.claimed_images_cap  # type: ignore[attr-defined]
    assert mine["image_counts"] == "claimed" and mine["num_images"] >= 10**9 - 10
    assert mine["size_term"] == pytest.approx(lam * torch.log(torch.tensor(float(cap))).item())
    assert all(r["image_counts"] == "verified" for r in results.values() if r is not mine)
    # No other project ever sees it: not listed, not ranked, not readable.
    dataset_b = service.post("/v1/datasets", files=archive(), headers=member_b).json()["id"]
    ranked_b = service.post(
        "/v1/rankings", json={"target_dataset_id": dataset_b}, headers=member_b
    ).json()
    assert source["id"] not in {r["source_id"] for r in ranked_b["results"]}
    listed = service.get("/v1/sources?page_size=200", headers=member_b).json()["items"]
    assert source["id"] not in {s["id"] for s in listed}
    # Only operators change the shared zoo: a member may not delete a shared source, nor
    # publish its own; an operator publishes it, and then every project sees it.
    assert service.delete(f"/v1/sources/{shared['id']}", headers=member_a).status_code == 403
    publish = f"/v1/sources/{source['id']}/publish"
    assert service.post(publish, headers=member_a).status_code == 403
    published = service.post(publish, params={"project": "team-a"}, headers={"X-API-Key": OPERATOR})
    assert published.status_code == 200 and published.json()["shared"]
    assert service.get(f"/v1/sources/{source['id']}", headers=member_b).status_code == 200


def test_quotas_bound_jobs_and_event_streams_per_project_and_key(service: TestClient) -> None:
    # Defect 4: one key could queue without bound, submit a 4.8-hour job, hold every stream.
    a, b = make_team(service, "team-a", False), make_team(service, "team-b", False)
    operator = {"X-API-Key": OPERATOR}
    limits = {"max_active_jobs": 1, "max_event_streams_per_key": 1}
    patched = service.patch("/v1/projects/team-a", json={"quotas": limits}, headers=operator)
    assert patched.status_code == 200 and patched.json()["quotas"]["max_active_jobs"] == 1
    jobs: dict[str, str] = {}
    for team in (a, b):
        member = team.as_("member")
        dataset = service.post("/v1/datasets", files=archive(), headers=member).json()["id"]
        body = {"target_dataset_id": dataset, "source_id": "best", "epochs": 1}
        first = service.post("/v1/finetunes", json=body, headers=member)
        assert first.status_code == 202, first.text
        jobs[team.name] = first.json()["id"]
    second = service.post("/v1/finetunes", json=body, headers=b.as_("member"))
    assert second.status_code == 202  # team-b has the default quota
    refused = service.post(
        "/v1/finetunes",
        json={**body, "target_dataset_id": service.get(
            "/v1/datasets", headers=a.as_("member")).json()["items"][0]["id"]},
        headers=a.as_("member"),
    )  # fmt: skip
    assert refused.status_code == 429 and refused.headers["content-type"] == PROBLEM
    problem: dict[str, Any] = refused.json()
    assert problem["quota"] == "max_active_jobs" and problem["usage"] == 1
    assert problem["limit"] == 1 and "Retry-After" in refused.headers
    # A job whose estimate is above the longest allowed: refused, with both figures.
    service.patch(
        "/v1/projects/team-b", json={"quotas": {"max_job_seconds": 0.001}}, headers=operator
    )
    long = service.post("/v1/finetunes", json={**body, "epochs": 50}, headers=b.as_("member"))
    assert long.status_code == 422 and long.json()["quota"] == "max_job_seconds"
    assert long.json()["usage"] > long.json()["limit"] == 0.001
    # One key holds at most its share of event streams.
    state = service.app.state.service  # type: ignore[attr-defined]
    key_id = service.get("/v1/whoami", headers=a.as_("member")).json()["key_id"]
    slot = state.streams.try_acquire(key_id)  # a stream this key holds open
    try:
        streams = service.get(f"/v1/jobs/{jobs['team-a']}/events", headers=a.as_("member"))
        assert streams.status_code == 429
        assert streams.json()["quota"] == "max_event_streams_per_key"
    finally:
        slot.release()
    usage = service.get("/v1/projects/team-a/usage", headers=a.as_("admin")).json()
    assert usage["active_jobs"] == 1 and usage["quotas"]["max_active_jobs"] == 1


def test_requests_per_minute_are_counted_per_key(service: TestClient) -> None:
    a = make_team(service, "team-a", False)
    operator = {"X-API-Key": OPERATOR}
    quota = {"quotas": {"requests_per_minute_per_key": 3}}
    assert service.patch("/v1/projects/team-a", json=quota, headers=operator).is_success
    answers = [service.get("/v1/whoami", headers=a.as_("viewer")).status_code for _ in range(4)]
    assert answers == [200, 200, 200, 429]
    assert service.get("/v1/whoami", headers=a.as_("member")).status_code == 200  # its own


def test_the_audit_log_lists_state_changes_without_keys(service: TestClient) -> None:
    a = make_team(service, "team-a")
    admin = a.as_("admin")
    deleted = service.delete(f"/v1/rankings/{a.objects['rankings']}", headers=a.as_("member"))
    assert deleted.status_code == 204
    service.delete(f"/v1/datasets/{a.objects['datasets']}", headers=a.as_("viewer"))  # 403
    entries = service.get("/v1/audit?page_size=200", headers=admin).json()["items"]
    member_id = service.get("/v1/whoami", headers=a.as_("member")).json()["key_id"]
    actions = [(e["action"], e["object_id"], e["status"]) for e in entries]
    assert actions[0] == ("DELETE /v1/datasets/{dataset_id}", a.objects["datasets"], 403)
    assert actions[1] == ("DELETE /v1/rankings/{ranking_id}", a.objects["rankings"], 204)
    assert ("POST /v1/datasets", a.objects["datasets"], 201) in actions
    assert ("POST /v1/finetunes", a.objects["jobs"], 202) in actions
    assert entries[1]["key_id"] == member_id
    assert {e["project_id"] for e in entries} == {entries[0]["project_id"]}
    text = str(entries)
    assert not any(key in text for key in a.keys.values()) and OPERATOR not in text
    # Operators see every project's; another project's admin sees none of team-a's.
    everything = service.get(
        "/v1/audit?all_projects=true&page_size=200", headers={"X-API-Key": OPERATOR}
    ).json()["items"]
    assert any(e["action"] == "POST /v1/projects" for e in everything)
    b = make_team(service, "team-b", with_objects=False)
    theirs = service.get("/v1/audit", headers=b.as_("admin")).json()["items"]
    assert not {e["id"] for e in theirs} & {e["id"] for e in entries}


def test_deleting_a_project_deletes_what_it_owns_and_says_so(service: TestClient) -> None:
    a = make_team(service, "team-a")
    operator = {"X-API-Key": OPERATOR}
    busy = service.delete("/v1/projects/team-a", headers=operator)
    assert busy.status_code == 409 and "queued or running" in busy.json()["detail"]
    cancel = service.post(f"/v1/jobs/{a.objects['queued_job']}/cancel", headers=a.as_("member"))
    assert cancel.status_code == 200
    assert service.delete("/v1/projects/team-a", headers=operator).status_code == 204
    assert service.get("/v1/whoami", headers=a.as_("admin")).status_code == 401
    for kind in ("datasets", "sources", "rankings", "jobs", "models"):
        path = f"/v1/{kind}/{a.objects[kind]}"
        assert service.get(path, headers=operator).status_code == 404, kind
    entries = service.get("/v1/audit", headers=operator).json()["items"]
    assert entries[0]["action"] == "DELETE /v1/projects/{project_id}"
    assert entries[0]["detail"].startswith("deleted 1 datasets, 1 sources, 1 models")
    assert service.delete("/v1/projects/default", headers=operator).status_code == 409


def test_retention_prunes_old_rankings(service: TestClient) -> None:
    a = make_team(service, "team-a", with_objects=False)
    member = a.as_("member")
    dataset = service.post("/v1/datasets", files=archive(), headers=member).json()["id"]
    old, new = (
        service.post("/v1/rankings", json={"target_dataset_id": dataset}, headers=member).json()
        for _ in range(2)
    )
    state = service.app.state.service  # type: ignore[attr-defined]
    with state.sessions() as session:
        session.execute(
            update(Ranking)
            .where(Ranking.id == old["id"])
            .values(created_at=datetime.now(UTC) - timedelta(days=31))
        )
        session.commit()
        assert prune_rankings(session, state.settings.ranking_retention_days) == 1
    assert service.get(f"/v1/rankings/{old['id']}", headers=member).status_code == 404
    assert service.get(f"/v1/rankings/{new['id']}", headers=member).status_code == 200


def test_misclassified_images_need_a_key_of_the_owning_project(service: TestClient) -> None:
    # Defect 2, and every route that returns dataset-derived bytes, found from the schema.
    a = make_team(service, "team-a")
    b = make_team(service, "team-b", with_objects=False)
    paths = service.get("/openapi.json").json()["paths"]
    byte_routes = [
        path
        for path, ops in paths.items()
        if "get" in ops
        and path.startswith("/v1/")
        and any(
            kind.startswith(("image/", "application/octet-stream", "application/zip"))
            for kind in ops["get"].get("responses", {}).get("200", {}).get("content", {})
        )
    ]
    assert "/v1/models/{model_id}/misclassified/{k}" in byte_routes
    assert len(byte_routes) >= 5
    for template in byte_routes:
        path = template.replace("{k}", "0")
        for name in ("dataset_id", "source_id", "model_id", "ranking_id"):
            path = path.replace("{" + name + "}", a.objects[name[:-3] + "s"])
        if "export" in path:
            path += "?format=onnx"
        assert service.get(path).status_code == 401, template
        if "{" in template:  # another project's object: not found
            assert service.get(path, headers=b.as_("admin")).status_code == 404, template
        owner = service.get(path, headers=a.as_("viewer"))
        assert owner.status_code in (200, 404), (template, owner.status_code)


def test_a_project_stores_at_most_its_storage_quota(service: TestClient) -> None:
    a = make_team(service, "team-a", with_objects=False)
    member, operator = a.as_("member"), {"X-API-Key": OPERATOR}
    first = service.post("/v1/datasets", files=archive(), headers=member)
    assert first.status_code == 201
    used = service.get("/v1/projects/team-a/usage", headers=a.as_("admin")).json()
    assert used["storage_bytes"] > 0
    quota = {"quotas": {"max_storage_bytes": used["storage_bytes"] + 1000}}
    assert service.patch("/v1/projects/team-a", json=quota, headers=operator).is_success
    refused = service.post("/v1/datasets", files=archive(), headers=member)
    assert refused.status_code == 507 and refused.json()["quota"] == "max_storage_bytes"
    assert refused.json()["usage"] == used["storage_bytes"]
    listed = service.get("/v1/datasets", headers=member).json()["items"]
    assert [d["id"] for d in listed] == [first.json()["id"]]  # nothing more was stored
    # Another project has its own room.
    b = make_team(service, "team-b", with_objects=False)
    assert service.post("/v1/datasets", files=archive(), headers=b.as_("member")).is_success


def test_a_member_may_not_delete_a_shared_source_nor_learn_who_uses_it(
    service: TestClient,
) -> None:
    a, b = make_team(service, "team-a", False), make_team(service, "team-b", False)
    member_a = a.as_("member")
    shared = service.get("/v1/sources", headers=member_a).json()["items"][0]
    dataset = service.post("/v1/datasets", files=archive(), headers=member_a).json()["id"]
    body = {"target_dataset_id": dataset, "source_id": shared["id"], "epochs": 1}
    job = service.post("/v1/finetunes", json=body, headers=member_a).json()["id"]
    refused = service.delete(f"/v1/sources/{shared['id']}", headers=b.as_("member"))
    assert refused.status_code == 403 and job not in refused.text
    # An operator is told which jobs hold it, whichever project they belong to.
    held = service.delete(f"/v1/sources/{shared['id']}", headers={"X-API-Key": OPERATOR})
    assert held.status_code == 409 and held.json()["jobs"] == [job]
    # A shared source names neither its project nor its dataset to the other projects.
    seen_by_b = service.get(f"/v1/sources/{shared['id']}", headers=b.as_("viewer")).json()
    assert seen_by_b["project_id"] is None and seen_by_b["dataset_id"] is None


def test_a_service_whose_keys_all_ended_stays_closed(client: TestClient) -> None:
    project = client.get("/v1/whoami").json()["project_id"]
    made = client.post(f"/v1/projects/{project}/keys", json={"role": "operator", "name": "k"})
    key = made.json()
    revoked = client.delete(
        f"/v1/projects/{project}/keys/{key['id']}", headers={"X-API-Key": key["key"]}
    )
    assert revoked.status_code == 204
    for headers in ({}, {"X-API-Key": key["key"]}, {"X-API-Key": "guess"}):
        assert client.get("/v1/whoami", headers=headers).status_code == 401


def test_the_default_project_keeps_the_unlimited_service_it_was(client: TestClient) -> None:
    usage = client.get("/v1/projects/default/usage").json()
    assert set(usage["quotas"].values()) == {None}
    assert client.get("/v1/whoami", params={"project": "\x00"}).status_code == 404


def test_a_quota_refusal_is_audited(service: TestClient) -> None:
    a = make_team(service, "team-a", False)
    operator = {"X-API-Key": OPERATOR}
    quota = {"quotas": {"max_active_jobs": 0}}
    assert service.patch("/v1/projects/team-a", json=quota, headers=operator).is_success
    dataset = service.post("/v1/datasets", files=archive(), headers=a.as_("member")).json()["id"]
    body = {"target_dataset_id": dataset, "source_id": "best", "epochs": 1}
    assert service.post("/v1/finetunes", json=body, headers=a.as_("member")).status_code == 429
    newest = service.get("/v1/audit", headers=a.as_("admin")).json()["items"][0]
    assert (newest["action"], newest["status"]) == ("POST /v1/finetunes", 429)
