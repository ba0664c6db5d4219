"""Every third-party import is declared in pyproject.toml, in a group the importing part is installed with.

Pure: reads the sources with ``ast`` (imports inside functions count too) and pyproject.toml with ``tomllib``,
and maps module names to distributions with the metadata of this environment (no network).
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterable
from importlib.metadata import distribution, packages_distributions
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "modelmesh-py"
CORE = "core"  # the [project] dependencies, installed with every extra

# part: (folders or files, the requirement groups it may import from). A file belongs to the longest path that
# contains it, so protos/generate.py is the proto generator's, not the mesh pod's.
PARTS: dict[str, tuple[list[str], list[str]]] = {
    "mesh pod": (["mesh", "protos"], [CORE]),
    "runtime adapters": (["runtime_adapters"], ["adapters"]),
    "demo harness": (["harness"], ["demo"]),
    "load tests": (["load_tests"], ["bench"]),
    "tests": (["tests"], ["dev"]),
    "proto generator": (["protos/generate.py"], ["dev"]),
}

# Files whose imports no group of pyproject.toml provides, and why.
NOT_CHECKED = {
    # a model of Triton's python backend: it runs in .venv-triton (deploy/local/setup-triton.sh)
    "runtime_adapters/triton/onnx_model.py": "Triton's python backend",
    # the KServe SDK's client: it runs in .venv-kserve (deploy/local/setup.sh)
    "tests/kserve_sdk_client.py": "the KServe SDK's environment",
}

# Modules that need an extra of their distribution: module -> (distribution, extra).
EXTRA_MODULES = {
    "tritonclient.grpc": ("tritonclient", "grpc"),
    "tritonclient.http": ("tritonclient", "http"),
}

# Declared requirements no source imports, and what uses them.
NOT_IMPORTED = {
    "moto": "harness/cluster.py starts moto_server",
    "py-spy": "load_tests/profile_hot_path.py runs py-spy",
    "pytest-asyncio": "pytest plugin (asyncio_mode)",
    "pytest-timeout": "pytest plugin (timeout)",
    "ruff": "make lint",
    "mypy": "make lint",
}

OWN_PACKAGES = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}


def normalise(name: str) -> str:
    """PEP 503 name normalisation."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirement(text: str) -> tuple[str, set[str]]:
    """``"name[extra, ...]>=1; marker"`` -> (normalised name, extras)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", text)
    assert match, f"unreadable requirement {text!r}"
    extras = {normalise(e) for e in (match.group(2) or "").split(",") if e.strip()}
    return normalise(match.group(1)), extras


def requirement_groups(pyproject: dict[str, Any]) -> dict[str, list[str]]:
    project = pyproject["project"]
    return {CORE: project["dependencies"], **project.get("optional-dependencies", {})}


def allowed(groups: dict[str, list[str]], names: Iterable[str]) -> dict[str, set[str]]:
    """Distribution -> extras the groups declare (with the core, and ``modelmesh-py[x]`` expanded)."""
    out: dict[str, set[str]] = {}
    todo, seen = [CORE, *names], set()
    while todo:
        group = todo.pop()
        if group in seen:
            continue
        seen.add(group)
        for text in groups[group]:
            name, extras = parse_requirement(text)
            if name == PROJECT:
                todo.extend(extras)
            else:
                out.setdefault(name, set()).update(extras)
    return out


def imports(path: Path) -> set[str]:
    """Absolute module names a file imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def third_party(modules: Iterable[str]) -> set[str]:
    return {
        m
        for m in modules
        if m.split(".")[0] not in sys.stdlib_module_names and m.split(".")[0] not in OWN_PACKAGES
    }


def part_files() -> dict[str, list[Path]]:
    """Part -> its .py files, each file in the part with the longest path containing it."""
    owners: dict[Path, tuple[int, str]] = {}
    for part, (paths, _) in PARTS.items():
        for rel in paths:
            path = ROOT / rel
            for file in [path] if path.is_file() else path.rglob("*.py"):
                if len(rel) > owners.get(file, (-1, ""))[0]:
                    owners[file] = (len(rel), part)
    files: dict[str, list[Path]] = {part: [] for part in PARTS}
    for file, (_, part) in sorted(owners.items()):
        if file.relative_to(ROOT).as_posix() not in NOT_CHECKED:
            files[part].append(file)
    return files


_DISTRIBUTIONS = packages_distributions()


def distributions_of(module: str) -> list[str]:
    """Installed distributions that provide a module (in a namespace like ``google``, by its subpackage)."""
    names = [normalise(d) for d in dict.fromkeys(_DISTRIBUTIONS.get(module.split(".")[0], []))]
    if len(names) > 1:
        prefix = "/".join(module.split(".")[:2])
        owning = [n for n in names if any(str(f).startswith(prefix) for f in distribution(n).files or [])]
        names = owning or names
    return names


def undeclared(files: Iterable[Path], declared: dict[str, set[str]]) -> list[str]:
    """``file: module (why)`` lines, one per file and package, for imports the declared requirements lack."""
    problems: dict[str, None] = {}  # ordered set
    for file in files:
        where = file.relative_to(ROOT) if file.is_relative_to(ROOT) else file
        for module in sorted(third_party(imports(file))):
            top = module.split(".")[0]
            dists = distributions_of(module)
            if not dists:
                problems[f"{where}: {top} (not installed here: declare it, run deploy/local/setup.sh)"] = None
            elif not any(d in declared for d in dists):
                problems[f"{where}: {top} ({' or '.join(dists)} is not declared for this part)"] = None
            for prefix, (dist, extra) in EXTRA_MODULES.items():
                inside = module == prefix or module.startswith(prefix + ".")
                if inside and extra not in declared.get(dist, set()):
                    problems[f"{where}: {prefix} (needs {dist}[{extra}])"] = None
    return list(problems)


PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
GROUPS = requirement_groups(PYPROJECT)


@pytest.mark.parametrize("part", list(PARTS))
def test_part_imports_only_what_its_groups_declare(part: str) -> None:
    files = part_files()[part]
    assert files, f"{part}: no files under {PARTS[part][0]}"
    problems = undeclared(files, allowed(GROUPS, PARTS[part][1]))
    assert not problems, f"{part} ({PARTS[part][1]}) imports undeclared packages:\n" + "\n".join(problems)


def test_groups_in_the_table_exist() -> None:
    for part, (_, names) in PARTS.items():
        assert set(names) <= set(GROUPS), f"{part}: unknown groups {set(names) - set(GROUPS)}"
        allowed(GROUPS, names)  # every self-reference names an existing extra (KeyError otherwise)


def test_every_declared_requirement_is_used() -> None:
    files = [file for part in part_files().values() for file in part]
    modules = {module for file in files for module in third_party(imports(file))}
    imported = {dist for module in modules for dist in distributions_of(module)}
    unused = set(allowed(GROUPS, GROUPS)) - imported
    assert unused == set(NOT_IMPORTED), "declared but imported nowhere (or NOT_IMPORTED is stale)"


def test_a_dev_only_import_in_the_harness_fails(tmp_path: Path) -> None:
    source = tmp_path / "demo.py"
    source.write_text("def main():\n    import pytest\n    from sklearn.datasets import load_iris\n")
    problems = undeclared([source], allowed(GROUPS, PARTS["demo harness"][1]))
    assert problems == [f"{source}: pytest (pytest is not declared for this part)"]


def test_self_references_expand() -> None:
    groups = {CORE: ["a>=1"], "x": ["b[fast]"], "y": [f"{PROJECT}[x]", "c"], "z": ["Modelmesh_Py[y]"]}
    assert allowed(groups, ["z"]) == {"a": set(), "b": {"fast"}, "c": set()}
    assert allowed(groups, []) == {"a": set()}
