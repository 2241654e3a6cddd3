"""GET /v1/rankings (#25): the project's past rankings, newest first, a page at a time, each
a summary of what the whole ranking (GET /v1/rankings/{ranking_id}) holds."""

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.helpers import PROBLEM, rank, upload_garments

pytestmark = pytest.mark.api

OPERATOR = "operator-key"
SOME_ID = "0123456789abcdef0123456789abcdef"


def key_of(client: TestClient, project: str, role: str) -> str:
    """A new key of ``role`` in ``project``, made by the operator."""
    made = client.post(
        f"/v1/projects/{project}/keys",
        json={"role": role, "name": f"{project}-{role}"},
        headers={"X-API-Key": OPERATOR},
    )
    assert made.status_code == 201, made.text
    return str(made.json()["key"])


def listed(client: TestClient, **params: Any) -> dict[str, Any]:
    """GET /v1/rankings with these query parameters (200 checked); the page."""
    response = client.get("/v1/rankings", params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def summary_of(ranking: dict[str, Any]) -> dict[str, Any]:
    """What the listing should say of a ranking, from the whole ranking."""
    results = ranking["results"]
    top = results[0] if results else {}
    return {
        "id": ranking["id"],
        "created_at": ranking["created_at"],
        "target_dataset_id": ranking["target_dataset_id"],
        "method": ranking["method"],
        "measure": ranking["measure"],
        "refine_method": (ranking.get("refine") or {}).get("method"),
        "calibration_id": ranking["calibration_id"],
        "num_results": len(results),
        "num_excluded": len(ranking["excluded"]),
        "top_source_id": top.get("source_id"),
        "top_source_name": top.get("name"),
        "top_score": top.get("score"),
        "source_rank": None,
    }


def test_rankings_are_listed_newest_first_a_page_at_a_time(
    make_client: Callable[..., TestClient], database_url: str | None
) -> None:
    client = make_client(database_url=database_url)
    garments, other = upload_garments(client, per_class=4), upload_garments(client, per_class=3)
    made = [
        rank(client, garments),
        rank(client, other, method="distance", measure="kl", top_k=2),
        rank(client, garments, top_k=3, refine={"method": "nce", "top": 2}),
        rank(client, garments, method="largest"),
    ]
    newest_first = [summary_of(r) for r in reversed(made)]

    pages, token = [], None
    while True:
        page = listed(client, page_size=3, **({"page_token": token} if token else {}))
        pages.append(page["items"])
        if not (token := page["next_page_token"]):
            break
    assert [len(items) for items in pages] == [3, 1]
    assert [item for items in pages for item in items] == newest_first
    # What a summary says is what the whole ranking holds.
    refined = newest_first[1]
    assert refined["refine_method"] == "nce" and refined["num_results"] == 3
    assert newest_first[2]["num_results"] == 2 and newest_first[2]["measure"] == "kl"
    assert newest_first[0]["num_results"] >= 21 and newest_first[0]["top_source_name"]

    assert listed(client, target_dataset_id=garments)["items"] == [
        s for s in newest_first if s["target_dataset_id"] == garments
    ]
    # A ranking outlives its dataset: the filter still finds it; an id no ranking names
    # gives an empty page, as a filter does.
    assert client.delete(f"/v1/datasets/{other}").status_code == 204
    assert listed(client, target_dataset_id=other)["items"] == [newest_first[2]]
    assert listed(client, target_dataset_id=SOME_ID) == {"items": [], "next_page_token": None}


def test_a_ranking_of_an_empty_zoo_is_listed_without_a_top(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(import_bundled_zoo=False)
    ranking = rank(client, upload_garments(client, per_class=3))
    assert ranking["results"] == [] and ranking["warnings"]

    (item,) = listed(client)["items"]
    assert item == summary_of(ranking)
    assert item["num_results"] == 0 and item["top_source_id"] is None


def test_the_listing_holds_the_projects_rankings_only(
    make_client: Callable[..., TestClient],
) -> None:
    service = make_client(api_keys=OPERATOR)
    made: dict[str, list[str]] = {}
    datasets: dict[str, str] = {}
    for team in ("team-a", "team-b"):
        created = service.post("/v1/projects", json={"name": team}, headers={"X-API-Key": OPERATOR})
        assert created.status_code == 201, created.text
        service.headers["X-API-Key"] = key_of(service, team, "member")
        datasets[team] = upload_garments(service, per_class=3)
        made[team] = [rank(service, datasets[team])["id"] for _ in range(2)]
    service.headers["X-API-Key"] = key_of(service, "team-a", "viewer")  # reading is enough

    assert [r["id"] for r in listed(service)["items"]] == made["team-a"][::-1]
    # Another project's dataset id filters nothing in: its rankings stay unseen.
    assert listed(service, target_dataset_id=datasets["team-b"])["items"] == []
    service.headers["X-API-Key"] = OPERATOR  # operators list the project they name
    named = listed(service, project="team-b")
    assert [r["id"] for r in named["items"]] == made["team-b"][::-1]


def test_rankings_filtered_by_source_say_where_it_ranked(
    make_client: Callable[..., TestClient], database_url: str | None
) -> None:
    client = make_client(database_url=database_url)
    garments = upload_garments(client, per_class=3)
    whole = rank(client, garments)
    top3 = rank(client, garments, top_k=3)
    largest = rank(client, garments, method="largest", top_k=2)
    fourth = whole["results"][3]["source_id"]
    # The 4th source of the whole ranking: in it, not in the top 3 (nor, unless it is the
    # largest, in the top 2 by size).
    items = listed(client, source_id=fourth)["items"]
    expected = [whole] + [r for r in (largest,) if fourth in ids_of(r)]
    assert [i["id"] for i in items] == [r["id"] for r in reversed(expected)]
    assert items[-1] == {**summary_of(whole), "source_rank": 4}
    first = top3["results"][0]["source_id"]
    ranks = {i["id"]: i["source_rank"] for i in listed(client, source_id=first)["items"]}
    assert ranks[top3["id"]] == 1 and ranks[whole["id"]] == 1
    both = listed(client, source_id=first, target_dataset_id=SOME_ID)
    assert both == {"items": [], "next_page_token": None}
    assert listed(client, source_id=SOME_ID)["items"] == []
    # By name as by id; a name no source has is a 404.
    by_name = listed(client, source_id=top3["results"][0]["name"])["items"]
    assert {i["id"]: i["source_rank"] for i in by_name} == ranks
    missing = client.get("/v1/rankings", params={"source_id": "no-such-source"})
    assert missing.status_code == 404, missing.text


def ids_of(ranking: dict[str, Any]) -> list[str]:
    """The ids of the sources a ranking ranked."""
    return [r["source_id"] for r in ranking["results"]]


def test_a_page_token_not_issued_here_is_a_400(client: TestClient) -> None:
    response = client.get("/v1/rankings", params={"page_token": "bm90LWEtdG9rZW4"})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == PROBLEM
    too_long = client.get("/v1/rankings", params={"target_dataset_id": "f" * 256})
    assert too_long.status_code == 422, too_long.text
