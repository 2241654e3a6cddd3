"""The layer rule: nothing below imports anything above, and no import cycle in app/.

Every import counts, including those inside functions (read from the source with ``ast``,
not from what happens to be loaded). The layers, bottom to top, are the ones DESIGN.md
draws; a module not named in LAYERS fails the test, so a new package must take its place.
"""

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

APP = Path(__file__).resolve().parents[1] / "app"

# Bottom to top. A module may import its own layer's modules and any layer below.
LAYERS: list[tuple[str, ...]] = [
    ("app.errors", "app.measures", "app.memory"),  # vocabulary: imports nothing of app
    ("app.config",),
    ("app.db", "app.models", "app.store", "app.unit_of_work", "app.pagination"),  # storage
    ("app.imaging",),  # decoding: archives, images, loading, the pixel cache
    ("app.families",),  # model families: build, layer groups, feature extractors
    ("app.p2l", "app.finetune"),  # the science: neither imports the other
    ("app.jobs",),  # the queue, leases, the worker loop, runners
    ("app.services",),  # use cases, one module per resource, and their job kinds
    ("app.schemas", "app.zoo"),  # HTTP models; zoo administration (bundled zoo, upgrade)
    ("app.api", "app.console"),  # routes
    ("app.main", "app.worker", "app.__main__", "app.keys"),  # composition roots
]
# Peers in one layer that must not import each other.
PEERS = [("app.p2l", "app.finetune"), ("app.schemas", "app.zoo")]


def module_name(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def app_modules() -> dict[str, Path]:
    return {module_name(p): p for p in APP.rglob("*.py") if "migrations" not in p.parts}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """Every app module ``name`` imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            # ``from app.x import y``: y may be a module of its own.
            targets = [
                f"{origin}.{a.name}" if f"{origin}.{a.name}" in modules else origin
                for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # a name inside a module
                target = target.rpartition(".")[0]
            if target.startswith("app") and target != name and target != "app":
                yield target


def layer_of(name: str) -> int:
    for index, layer in enumerate(LAYERS):
        if any(name == prefix or name.startswith(prefix + ".") for prefix in layer):
            return index
    raise AssertionError(f"{name} is in no layer: give it one in LAYERS (and DESIGN.md)")


def package_of(name: str) -> str:
    return ".".join(name.split(".")[:2])


def import_graph() -> dict[str, set[str]]:
    modules = app_modules()
    return {name: set(imports_of(name, path, modules)) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_a_layer_above_its_own() -> None:
    graph = import_graph()
    upward = [
        f"{name} -> {target}"
        for name, targets in sorted(graph.items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(name)
    ]
    assert upward == []


def test_peers_do_not_import_each_other() -> None:
    graph = import_graph()
    crossing = [
        f"{name} -> {target}"
        for name, targets in sorted(graph.items())
        for target in sorted(targets)
        for a, b in PEERS
        if {package_of(name), package_of(target)} == {a, b}
    ]
    assert crossing == []


def test_no_import_cycle_between_modules_or_packages() -> None:
    graph = import_graph()
    packages: dict[str, set[str]] = {}
    for name, targets in graph.items():
        for target in targets:
            if package_of(target) != package_of(name):
                packages.setdefault(package_of(name), set()).add(package_of(target))
    assert cycles(graph) == []
    assert cycles(packages) == []


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    """The rule would be blind without this: a function-level import is still an import."""
    source = tmp_path / "probe.py"
    source.write_text("def late():\n    from app.api import deps\n    return deps\n")
    modules = {**app_modules(), "app.probe": source}
    assert list(imports_of("app.probe", source, modules)) == ["app.api.deps"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_schemas_import_no_torch() -> None:
    """The HTTP models load in a fraction of the time torch takes (a fresh interpreter)."""
    import subprocess
    import sys

    check = "import app.schemas, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", check], check=True, timeout=120)
