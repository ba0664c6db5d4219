"""The package's layers (docs/ARCHITECTURE.md): a module imports only from its own layer or lower ones, and
the mesh never imports the development harness. Read from the source with ``ast`` (pure)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# lowest first; mesh/errors.py and mesh/limits.py are the base every layer may use
LAYERS = (
    "base",
    "observe",
    "registry",
    "models",
    "routing",
    "cluster",
    "status_page",
    "fronts",
    "process",
    "cli",
)


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "harness":
        return "harness"
    if len(parts) == 2:
        return "base"
    return parts[1]


def mesh_imports(path: Path) -> set[str]:
    """Modules of mesh/ and harness/ that ``path`` imports, at run time (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(child) for child in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.split(".")[0] in ("mesh", "harness")
        ):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] in ("mesh", "harness"))
    return found


def modules() -> dict[str, Path]:
    found = {}
    for package in ("mesh", "harness"):
        for path in sorted((REPO / package).rglob("*.py")):
            dotted = ".".join(path.relative_to(REPO).with_suffix("").parts)
            found[dotted.removesuffix(".__init__")] = path
    return found


@pytest.mark.parametrize("module", sorted(m for m in modules() if m.startswith("mesh.")))
def test_a_mesh_module_imports_no_higher_layer(module: str) -> None:
    own = LAYERS.index(layer_of(module))
    for imported in mesh_imports(modules()[module]):
        assert layer_of(imported) != "harness", f"{module} imports the harness ({imported})"
        assert LAYERS.index(layer_of(imported)) <= own, (
            f"{module} ({layer_of(module)}) imports {imported} ({layer_of(imported)}), a higher layer"
        )


def test_no_import_cycles() -> None:
    graph = {name: {i for i in mesh_imports(path) if i in modules()} for name, path in modules().items()}
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> None:
        if name in stack:
            raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(name) :], name]))
        if name in done:
            return
        for child in graph[name]:
            visit(child, [*stack, name])
        done.add(name)

    for name in graph:
        visit(name, [])
