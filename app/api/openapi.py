"""What the OpenAPI document says beyond what FastAPI derives from the routes: operation
names a generated client calls its functions and modules by (``datasets_upload.sync(...)``),
a description per tag (what Swagger UI heads each group of routes with), and binary bodies
spelled so that client generators see bytes."""

from typing import Any

from fastapi.routing import APIRoute

# One entry per tag an operation uses, in the order Swagger UI and ReDoc show them
# (tests/api/test_openapi.py checks that every used tag has one).
TAGS: list[dict[str, str]] = [
    {
        "name": "datasets",
        "description": "Labelled image datasets: upload an archive of class folders (every "
        "image validated, the signature computed on upload), list, read the signature, "
        "delete.",
    },
    {
        "name": "sources",
        "description": "The zoo of pretrained source models: register one (safetensors "
        "weights and the dataset or signature it was trained on), list, download the "
        "weights, publish into the shared zoo, map the zoo in feature space.",
    },
    {
        "name": "rankings",
        "description": "Rank the zoo for a target dataset by P2L or a baseline, with every "
        "score's parts and an optional second stage (LogME, LEEP, NCE, k-NN); list, re-read, "
        "plot and delete past rankings.",
    },
    {
        "name": "jobs",
        "description": "Fine-tunes (and large evaluations) run as background jobs: start or "
        "estimate one, poll it, stream its progress as server-sent events, cancel it.",
    },
    {
        "name": "models",
        "description": "Fine-tuned models: their reports, predictions, evaluation on a "
        "labelled archive, export (ONNX or TorchScript), and registration as a new source.",
    },
    {
        "name": "calibration",
        "description": "The ranking's measure and lambda in force, the evidence finished "
        "fine-tunes left, and a refit of both on that evidence.",
    },
    {
        "name": "reference",
        "description": "The reference network every signature is computed with.",
    },
    {
        "name": "architectures",
        "description": "The architectures a source can have: input size, normalisation, "
        "layer groups (what a fine-tune's learning rates are set per).",
    },
    {
        "name": "projects",
        "description": "Projects, their quotas and usage, their API keys, and who a key is "
        "(`/v1/whoami`). Every /v1 request acts in one project.",
    },
    {
        "name": "audit",
        "description": "The audit log: every state-changing request, who made it, and how it "
        "ended (admins; operators for every project).",
    },
    {
        "name": "health",
        "description": "Liveness, database readiness and Prometheus metrics; no key needed.",
    },
]


def operation_id(route: APIRoute) -> str:
    """``{tag}_{action}``: the route's own tag (its last: a route's tags come after its
    router's), then its function's name without that tag's noun. ``upload_dataset`` under
    datasets is ``datasets_upload``, ``list_audit`` under audit ``audit_list``, ``health``
    under health just ``health``. Unique because the function names are unique within a
    tag (tests/api/test_openapi.py checks it)."""
    if not route.tags:  # every router here has a tag; FastAPI's own style is the fallback
        return route.name
    tag = str(route.tags[-1])
    noun = {tag, tag.removesuffix("s")}
    action = [word for word in route.name.split("_") if word not in noun]
    return "_".join([tag, *action])


BINARY = {"type": "string", "format": "binary"}


def binary_bodies(document: dict[str, Any]) -> dict[str, Any]:
    """Mark every file upload and every binary answer as ``format: binary`` (in place;
    idempotent; returns the document).

    Pydantic writes an upload as OpenAPI 3.1's ``contentMediaType`` alone, which
    openapi-python-client reads as a plain string (a generated client would send the file's
    name as text); a PNG, zip or weights answer comes with no schema at all, which generators
    read as no body. ``format: binary`` is what they (and Swagger UI) take for bytes.
    """
    for component in document.get("components", {}).get("schemas", {}).values():
        for prop in component.get("properties", {}).values():
            for node in (prop, prop.get("items", {}), *prop.get("anyOf", [])):
                for item in (node, node.get("items", {})):
                    if item.get("type") == "string" and "contentMediaType" in item:
                        item["format"] = "binary"
    for by_method in document.get("paths", {}).values():
        for operation in by_method.values():
            for response in operation.get("responses", {}).values():
                for media_type, content in response.get("content", {}).items():
                    textual = media_type.startswith("text/") or media_type.endswith("json")
                    if not textual and "schema" not in content:
                        content["schema"] = dict(BINARY)
    return document
