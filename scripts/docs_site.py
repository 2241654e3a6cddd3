"""The documentation site's hooks (mkdocs.yml names this file): the pages generated from the
code and from the committed benchmark results, and the check that every figure the docs
quote matches its result file.

Generated at build time, never committed, so they cannot drift from what they describe:

- ``reference/configuration.md``: every setting of ``app.config.Settings``;
- ``reference/api.md``: every operation of the OpenAPI document (``app.main.app.openapi()``);
- ``results/<name>.md``: each result file ``bench/results/<name>.md`` (and its plots);
- ``changelog.md``: ``CHANGELOG.md``.

**Figures.** A benchmark figure quoted in the docs or the README carries the place it comes
from, in an HTML comment right after it (invisible once rendered)::

    LogME's mean regret 0.035<!-- fig selection#/methods/all/logme/regret -->, ...
    a median 8.9 %<!-- fig estimates#/median_abs_error_percent_measured --> of the time

``selection`` names ``bench/results/selection.json``; the rest is a JSON pointer (RFC 6901:
``~1`` for a ``/`` inside a key, ``~0`` for ``~``), optionally followed by ``*100`` or
``/60`` to scale the value (fractions shown as percentages, seconds as minutes). The figure
must equal the value rounded half-up to the figure's own decimals (thousands separators and
a leading ``+`` are ignored). ``tests/deployment/test_docs_site.py`` runs the check on every
page, and the build runs it again (``mkdocs build --strict`` fails on its warnings).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
# What the docs may quote figures from; each page quotes with the file's stem.
FIGURE = re.compile(
    r"(?P<figure>[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)"  # 0.034, 1,463, +0.055
    r"(?P<between>[^\d<\n]{0,12}?)"  # a unit or emphasis: " %", "x", " s", "**"
    r"<!--\s*fig\s+(?P<file>[\w.-]+)#(?P<pointer>/[^>]*?)"
    r"(?:\s+(?P<op>[*/])\s*(?P<factor>\d+(?:\.\d+)?))?\s*-->"
)
# A marker that the pattern above does not read (a typo in it, or no figure before it).
MARKER = re.compile(r"<!--\s*fig\b")
logger = logging.getLogger("mkdocs.plugins.p2l")


@dataclass(frozen=True)
class FigureProblem:
    """One quoted figure that does not match (or cannot be found in) its result file."""

    where: str
    quoted: str
    source: str
    problem: str

    def __str__(self) -> str:
        return f"{self.where}: {self.quoted!r} ({self.source}): {self.problem}"


def resolve_pointer(document: Any, pointer: str) -> Any:
    """The value at an RFC 6901 JSON pointer (``/a/0/b``) of a parsed JSON document."""
    value = document
    for raw in pointer.lstrip("/").split("/"):
        key = raw.replace("~1", "/").replace("~0", "~")
        value = value[int(key)] if isinstance(value, list) else value[key]
    return value


def _load_result(stem: str, cache: dict[str, Any]) -> Any:
    if stem not in cache:
        cache[stem] = json.loads((RESULTS / f"{stem}.json").read_text())
    return cache[stem]


def check_figures(
    text: str, where: str, cache: dict[str, Any] | None = None
) -> list[FigureProblem]:
    """Every figure-with-marker in ``text`` that differs from its result file, or cannot be read."""
    cache = {} if cache is None else cache
    problems: list[FigureProblem] = []
    found = 0
    for match in FIGURE.finditer(text):
        found += 1
        line = text.count("\n", 0, match.start()) + 1
        quoted, stem, pointer = match["figure"], match["file"], match["pointer"].strip()
        source = f"bench/results/{stem}.json#{pointer}"
        place = f"{where}:{line}"
        try:
            value = resolve_pointer(_load_result(stem, cache), pointer)
            exact = Decimal(str(value))
        except FileNotFoundError:
            problems.append(FigureProblem(place, quoted, source, "no such result file"))
            continue
        except (KeyError, IndexError, ValueError, TypeError, InvalidOperation):
            problems.append(FigureProblem(place, quoted, source, "no number at that pointer"))
            continue
        if match["op"]:
            factor = Decimal(match["factor"])
            exact = exact * factor if match["op"] == "*" else exact / factor
        shown = Decimal(quoted.replace(",", "").lstrip("+"))
        decimals = Decimal(1).scaleb(shown.as_tuple().exponent)  # type: ignore[arg-type]
        expected = exact.quantize(decimals, rounding=ROUND_HALF_UP)
        if expected != shown:
            problems.append(
                FigureProblem(place, quoted, source, f"the result file says {expected} ({value})")
            )
    markers = len(MARKER.findall(text))
    if markers != found:
        problems.append(
            FigureProblem(where, "", "", f"{markers - found} figure marker(s) not read: a marker "
                          "needs a number right before it and a pointer like selection#/a/b")
        )  # fmt: skip
    return problems


# --- Generated pages --------------------------------------------------------------------


def _human_bytes(value: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= size and value % (size // 1024 or 1) == 0:
            return f"{value / size:g} {unit}"
    return f"{value} bytes"


def _default_text(name: str, field: Any) -> str:
    default = field.default_factory() if field.default_factory is not None else field.default
    if default is None:
        return "*(unset)*"
    if isinstance(default, list | dict) and not default:
        return "*(empty)*"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, list):
        return f"`{','.join(map(str, default))}`"
    if isinstance(default, dict):
        return f"`{json.dumps(default)}`"
    text = f"`{getattr(default, 'value', default)}`"
    if name.endswith("_bytes") and isinstance(default, int) and default >= 1024:
        text += f" ({_human_bytes(default)})"
    return text


def configuration_page() -> str:
    """The settings table, from ``app.config.Settings`` (names, defaults, descriptions)."""
    from app.config import Settings

    lines = [
        "# Configuration",
        "",
        "One settings class, `app.config.Settings`, read from the environment (prefix `P2L_`)",
        "or from a `.env` file in the working directory. This page is generated from that",
        "class when the site is built. Sizes are in bytes; `none` or an empty value unsets",
        "a setting that may be unset (a quota: unlimited).",
        "",
        "| Variable | Default | Meaning |",
        "| --- | --- | --- |",
    ]
    for name, field in Settings.model_fields.items():
        lines.append(
            f"| `P2L_{name.upper()}` | {_default_text(name, field)} | {_cell(field.description)} |"
        )
    lines += [
        "",
        "The schema is managed by Alembic (`app/migrations/`) and migrated on start-up; to",
        "migrate by hand: `.venv/bin/alembic upgrade head` (it reads the same settings).",
        "",
    ]
    return "\n".join(lines)


def _schema_type(schema: dict[str, Any], components: dict[str, Any]) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            kinds = [_schema_type(s, components) for s in schema[key]]
            return " \\| ".join(k for k in kinds if k != "null") + (
                " or null" if "null" in kinds else ""
            )
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_schema_type(schema.get('items', {}), components)}"
    if kind == "string" and schema.get("format") == "binary":
        return "file"
    return str(kind)


def _cell(text: str | None) -> str:
    """Text for one table cell: one line, pipes escaped, and no raw HTML (a ``<name>`` in a
    description would otherwise vanish as an unknown tag)."""
    text = " ".join((text or "").split()).replace("|", "\\|")
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _fields_table(schema: dict[str, Any], components: dict[str, Any]) -> list[str]:
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[-1]]
    properties = schema.get("properties", {})
    if not properties:
        return []
    required = set(schema.get("required", []))
    rows = ["| field | type | required | description |", "| --- | --- | --- | --- |"]
    for name, prop in properties.items():
        kind = _schema_type(prop, components)
        needed = "yes" if name in required else ""
        rows.append(f"| `{name}` | {kind} | {needed} | {_cell(prop.get('description'))} |")
    return rows


def api_page(document: dict[str, Any] | None = None) -> str:
    """Every operation of the OpenAPI document, by tag: parameters, body fields, responses."""
    if document is None:
        from app.main import app

        document = app.openapi()
    components = document.get("components", {}).get("schemas", {})
    tags = {tag["name"]: tag.get("description", "") for tag in document.get("tags", [])}
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            tag = (operation.get("tags") or ["other"])[0]
            by_tag.setdefault(tag, []).append((method.upper(), path, operation))
    lines = [
        "# API reference",
        "",
        f"Generated from the service's OpenAPI document (version "
        f"`{document['info'].get('version', '')}`) when the site is built. A running service",
        "serves the same document at `/openapi.json`, Swagger UI at `/docs` and ReDoc at",
        "`/redoc`. Errors are `application/problem+json` ([Errors](../guide/errors.md)).",
        "",
    ]
    for tag in [*tags, *(t for t in by_tag if t not in tags)]:
        if tag not in by_tag:
            continue
        lines += [f"## {tag}", ""]
        if tags.get(tag):
            lines += [_cell(tags[tag]), ""]
        for method, path, operation in by_tag[tag]:
            lines += [f"### `{method} {path}`", ""]
            summary = operation.get("summary", "")
            lines += [f"**{_cell(summary)}** (operation `{operation.get('operationId', '')}`)", ""]
            if operation.get("description"):
                lines += [operation["description"].strip(), ""]
            parameters = operation.get("parameters", [])
            if parameters:
                lines += ["| parameter | in | type | required | description |",
                          "| --- | --- | --- | --- | --- |"]  # fmt: skip
                for parameter in parameters:
                    lines.append(
                        f"| `{parameter['name']}` | {parameter['in']} | "
                        f"{_schema_type(parameter.get('schema', {}), components)} | "
                        f"{'yes' if parameter.get('required') else ''} | "
                        f"{_cell(parameter.get('description'))} |"
                    )
                lines.append("")
            body = operation.get("requestBody", {}).get("content", {})
            for media_type, content in body.items():
                lines += [f"Request body (`{media_type}`):", ""]
                lines += [*_fields_table(content.get("schema", {}), components), ""]
            responses = operation.get("responses", {})
            if responses:
                lines.append(
                    "Responses: "
                    + "; ".join(
                        f"`{code}` {_cell(r.get('description'))}" for code, r in responses.items()
                    )
                    + "."
                )
                lines.append("")
    return "\n".join(lines)


def result_page(stem: str) -> str:
    """A committed result file as a page, with where it comes from."""
    text = (RESULTS / f"{stem}.md").read_text()
    note = (
        f"\n\n---\n\nThe committed file `bench/results/{stem}.md`, written by the benchmark "
        f"with `bench/results/{stem}.json`. See [Benchmarks](../benchmarks.md) for how to run "
        "it and what the figures mean.\n"
    )
    # Plots beside it are published under results/ too, so relative links keep working.
    return text + note


# --- mkdocs hooks -----------------------------------------------------------------------


def on_files(files: Any, config: Any) -> Any:
    """Add the generated pages and the result plots to the site."""
    from mkdocs.structure.files import File

    generated = {
        "reference/configuration.md": configuration_page(),
        "reference/api.md": api_page(),
        # The changelog links to docs/ pages from the repository root; on the site they are
        # beside it.
        "changelog.md": (ROOT / "CHANGELOG.md").read_text().replace("](docs/", "]("),
    }
    for stem in sorted(p.stem for p in RESULTS.glob("*.md")):
        generated[f"results/{stem}.md"] = result_page(stem)
    for uri, content in generated.items():
        files.append(File.generated(config, uri, content=content))
    for plot in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"results/{plot.name}", abs_src_path=str(plot)))
    return files


_FIGURE_CACHE: dict[str, Any] = {}


def on_pre_build(config: Any) -> None:
    """Read the result files afresh on every build (``mkdocs serve`` rebuilds in-process)."""
    _FIGURE_CACHE.clear()


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Warn (an error under ``--strict``) for each figure that differs from its result file."""
    for problem in check_figures(markdown, page.file.src_uri, _FIGURE_CACHE):
        logger.warning("figure does not match its result file: %s", problem)
    return markdown
