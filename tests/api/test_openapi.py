"""The OpenAPI document documents itself: examples that are true, typed fields, clean text."""

import re
from typing import Any

import pytest
from pydantic import BaseModel

from app import schemas
from app.api.examples import EXAMPLES
from app.models import JobStatus

pytestmark = pytest.mark.api


def _is_upload(prop: dict[str, Any]) -> bool:
    """A multipart file part (binary), alone or in a list, optional or not."""
    text = str(prop)
    return "contentMediaType" in text or "'format': 'binary'" in text


def test_every_schema_has_an_example(spec: dict[str, Any]) -> None:
    missing = []
    for name, component in spec["components"]["schemas"].items():
        if name.startswith("Body_"):  # multipart forms: every field that is not a file
            fields = [p for p, prop in component["properties"].items() if not _is_upload(prop)]
            missing += [
                f"{name}.{f}" for f in fields if "examples" not in component["properties"][f]
            ]
        elif not component.get("examples"):
            missing.append(name)
    assert missing == []


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_each_example_is_a_valid_body_of_its_schema(name: str) -> None:
    model = getattr(schemas, name)
    assert isinstance(model, type) and issubclass(model, BaseModel)
    model.model_validate(EXAMPLES[name])


def test_job_and_model_fields_are_typed(spec: dict[str, Any]) -> None:
    components = spec["components"]["schemas"]
    job = components["JobOut"]["properties"]
    assert set(job["status"]["enum"]) == {"queued", "running", "succeeded", "failed", "cancelled"}
    assert set(job["status"]["enum"]) == {status.value for status in JobStatus}
    assert job["progress"]["$ref"] == "#/components/schemas/JobProgress"
    result_refs = {ref["$ref"] for ref in job["result"]["anyOf"] if "$ref" in ref}
    assert result_refs == {
        "#/components/schemas/FinetuneReport",
        "#/components/schemas/EvaluationReport",
    }
    report = components["ModelOut"]["properties"]["report"]
    assert report["$ref"] == "#/components/schemas/FinetuneReport"


def _undescribed_properties(
    node: object, where: str, components: dict[str, Any], seen: set[str]
) -> list[str]:
    """Every property without a description in a schema node, its $refs followed (once)."""
    if isinstance(node, list):
        return [
            missing
            for item in node
            for missing in _undescribed_properties(item, where, components, seen)
        ]
    if not isinstance(node, dict):
        return []
    missing = []
    if (ref := node.get("$ref")) and (name := ref.rsplit("/", 1)[-1]) not in seen:
        seen.add(name)
        missing += _undescribed_properties(components[name], name, components, seen)
    for field, prop in node.get("properties", {}).items():
        if not prop.get("description", "").strip():
            missing.append(f"{where}.{field}")
        missing += _undescribed_properties(prop, f"{where}.{field}", components, seen)
    for key in ("items", "anyOf", "oneOf", "allOf", "additionalProperties"):
        missing += _undescribed_properties(node.get(key), where, components, seen)
    return missing


def test_every_request_field_is_described(spec: dict[str, Any]) -> None:
    """Every parameter (path, query, header) and every property of every request body (JSON
    or multipart form, nested schemas included) says what it is."""
    components = spec["components"]["schemas"]
    undescribed = []
    seen: set[str] = set()
    for method, path, operation in _operations(spec):
        operation_name = f"{method.upper()} {path}"
        undescribed += [
            f"{operation_name} {parameter['in']} {parameter['name']}"
            for parameter in operation.get("parameters", [])
            if not parameter.get("description", "").strip()
        ]
        for content in operation.get("requestBody", {}).get("content", {}).values():
            undescribed += _undescribed_properties(
                content["schema"], operation_name, components, seen
            )
    assert undescribed == []
    assert {"RankingRequest", "FinetuneRequest", "QuotasPatch", "RaceOptions"} <= seen


def _descriptions(node: object) -> list[str]:
    """Every description string anywhere in a JSON document."""
    if isinstance(node, dict):
        own = [node["description"]] if isinstance(node.get("description"), str) else []
        return own + [text for value in node.values() for text in _descriptions(value)]
    if isinstance(node, list):
        return [text for value in node for text in _descriptions(value)]
    return []


def test_no_text_that_renders_as_html_tags(spec: dict[str, Any]) -> None:
    """ReDoc renders descriptions as Markdown: a bare <class> vanishes as an unknown tag."""
    texts = _descriptions(spec)
    assert len(texts) > 100
    assert [t for t in texts if re.search(r"<[a-zA-Z_][\w-]*>", t)] == []


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, operation) of every operation in the document."""
    return [
        (method, path, operation)
        for path, by_method in spec["paths"].items()
        for method, operation in by_method.items()
    ]


def test_operation_ids_name_what_operations_do(spec: dict[str, Any]) -> None:
    """Generated clients name their functions after them: ``datasets_upload``, not FastAPI's
    ``upload_dataset_v1_datasets_post``."""
    ids = [operation["operationId"] for _, _, operation in _operations(spec)]
    assert len(ids) == len(set(ids)) > 50
    badly_named = []
    for method, path, operation in _operations(spec):
        name = operation["operationId"]
        # What FastAPI appends to the function's name: the path, then the method.
        path_words = re.sub(r"\W", "_", path).strip("_")
        parameters = re.findall(r"{(\w+)}", path)
        if (
            not re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", name)
            or "v1" in name
            or f"{path_words}_{method}" in name
            or any(parameter in name for parameter in parameters)
            or not name.startswith(operation["tags"][-1])
        ):
            badly_named.append(f"{method.upper()} {path}: {name}")
    assert badly_named == []
    named = {(m, p): operation["operationId"] for m, p, operation in _operations(spec)}
    assert named["post", "/v1/datasets"] == "datasets_upload"
    assert named["get", "/v1/rankings"] == "rankings_list"
    assert named["get", "/v1/jobs/{job_id}"] == "jobs_get"
    assert named["get", "/v1/audit"] == "audit_list"


def test_every_tag_is_described(spec: dict[str, Any]) -> None:
    described = {tag["name"]: tag.get("description") for tag in spec["tags"]}
    used = {tag for _, _, operation in _operations(spec) for tag in operation["tags"]}
    assert used and all(described.get(tag) for tag in used), used - set(described)
    assert set(described) == used  # no tag described that nothing uses


def test_every_schema_property_is_described(spec: dict[str, Any]) -> None:
    """Responses too: a generated client's docstrings come from these."""
    undescribed = [
        f"{name}.{field}"
        for name, component in spec["components"]["schemas"].items()
        for field, prop in component.get("properties", {}).items()
        if not prop.get("description", "").strip()
    ]
    assert undescribed == []


def test_bytes_and_problems_are_spelled_as_client_generators_read_them(
    spec: dict[str, Any],
) -> None:
    """Uploads and binary answers are ``format: binary`` (a bare ``contentMediaType`` reads
    as text to openapi-python-client, an answer without a schema as no body); problem+json
    bodies name their schema (generators parse the first JSON media type)."""
    components = spec["components"]["schemas"]
    uploads = [
        f"{name}.{field}"
        for name, component in components.items()
        for field, prop in component.get("properties", {}).items()
        if _is_upload(prop)
    ]
    assert len(uploads) >= 5  # datasets, sources (weights, signature), predict, evaluate
    textual_uploads = [u for u in uploads if "'format': 'binary'" not in str(_field(spec, u))]
    assert textual_uploads == []
    unreadable = []
    for method, path, operation in _operations(spec):
        for status, response in operation["responses"].items():
            for media_type, content in response.get("content", {}).items():
                where = f"{method.upper()} {path} {status} {media_type}"
                if media_type == "application/problem+json":
                    if content.get("schema") != {"$ref": "#/components/schemas/Problem"}:
                        unreadable.append(where)
                elif not media_type.startswith("text/") and "schema" not in content:
                    unreadable.append(where)
    assert unreadable == []


def _field(spec: dict[str, Any], dotted: str) -> dict[str, Any]:
    name, field = dotted.split(".")
    return dict(spec["components"]["schemas"][name]["properties"][field])
