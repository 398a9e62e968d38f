"""Every module the package imports is declared by the install that needs it.

Three installs use the package: the core (`pip install stock-pipeline`: `ingest` and `demo`), the
`lakehouse` extra on top of it, and a Databricks cluster, which gets the `databricks` extra next to
what the Databricks Runtime already has. A dependency that only arrives through a dev tool (as click
once did through moto) passes every other test and breaks the nightly at import; this test reads the
imports from the source and fails first. `.ci/run` also installs the built wheel into an empty
virtualenv and runs it from an empty directory.
"""

from __future__ import annotations

import ast
import email.parser
import importlib.metadata
import importlib.util
import re
import sys
import tomllib
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO

PACKAGE = REPO / "stock_pipeline"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
#: Modules that only the lakehouse extra can run, and the modules the Databricks notebooks import.
LAKEHOUSE_MODULES = {"lakehouse"}
NOTEBOOK_MODULES = {"medallion", "medallion_spark"}
SPARK_ONLY_MODULES = {"medallion_spark"}
#: What every Databricks Runtime the bundle supports ships; the wheel must not replace it.
DATABRICKS_RUNTIME = {"pyspark", "pandas", "pyarrow", "numpy"}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(requirements: Iterable[str]) -> set[str]:
    names = set()
    for requirement in requirements:
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
        assert match, requirement
        names.add(_normalize(match.group()))
    return names


CORE = _names(PYPROJECT["project"]["dependencies"])
EXTRAS = {
    name: _names(reqs) for name, reqs in PYPROJECT["project"]["optional-dependencies"].items()
}
DEV = _names(r for r in PYPROJECT["dependency-groups"]["dev"] if isinstance(r, str))


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(path: Path) -> set[str]:
    """Dotted names a file imports when it runs: at module level or in a function, not the
    ones under `if TYPE_CHECKING:`."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            if node.module == "stock_pipeline":
                found.update(f"stock_pipeline.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def _module_file(module: str) -> Path | None:
    """The package module a dotted name points at (None for a name imported from a module)."""
    parts = module.split(".")[1:]
    if not parts:
        return PACKAGE / "__init__.py"
    path = PACKAGE.joinpath(*parts)
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _third_party(imports: Iterable[str]) -> set[str]:
    tops = {name.split(".")[0] for name in imports}
    return {t for t in tops if t != "stock_pipeline" and t not in sys.stdlib_module_names}


def _distributions(modules: Iterable[str]) -> dict[str, set[str]]:
    """Top-level import name -> the distributions that provide it, in this environment."""
    provided = importlib.metadata.packages_distributions()
    out = {}
    for module in modules:
        assert module in provided, f"no installed distribution provides `import {module}`"
        out[module] = {_normalize(d) for d in provided[module]}
    return out


def _closure(modules: Iterable[str]) -> dict[str, set[str]]:
    """Package module files reached from `modules` (the package's __init__ included), each with the
    third-party modules it imports."""
    todo = [PACKAGE / "__init__.py", *(PACKAGE / f"{m}.py" for m in modules)]
    seen: dict[str, set[str]] = {}
    while todo:
        path = todo.pop()
        if path.name in seen:
            continue
        imports = _runtime_imports(path)
        seen[path.name] = _third_party(imports)
        for name in imports:
            if name.startswith("stock_pipeline"):
                target = _module_file(name)
                if target is not None:
                    todo.append(target)
    return seen


def _package_modules() -> set[str]:
    return {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def _undeclared(by_file: dict[str, set[str]], declared: set[str]) -> dict[str, dict[str, set[str]]]:
    """Per file, the imports no declared distribution provides."""
    out: dict[str, dict[str, set[str]]] = {}
    for file, modules in by_file.items():
        for module, dists in _distributions(modules).items():
            if not dists & declared:
                out.setdefault(file, {})[module] = dists
    return out


def _core_files() -> dict[str, set[str]]:
    # The optional modules are imported lazily, by the command that needs them (which says which
    # extra to install when it is missing); everything else must run on the core install.
    core = _package_modules() - LAKEHOUSE_MODULES - SPARK_ONLY_MODULES
    return {
        f"{m}.py": _third_party(_runtime_imports(PACKAGE / f"{m}.py")) for m in (*core, "__init__")
    }


def test_every_core_import_is_a_core_dependency() -> None:
    assert _undeclared(_core_files(), CORE) == {}


def test_every_core_dependency_is_imported_by_the_core() -> None:
    imported = set().union(*_distributions(set().union(*_core_files().values())).values())
    assert CORE - imported == set()


def test_the_lakehouse_extra_declares_what_the_lakehouse_imports() -> None:
    files = {f"{m}.py": _closure([m])[f"{m}.py"] for m in LAKEHOUSE_MODULES}
    assert _undeclared(files, CORE | EXTRAS["lakehouse"]) == {}
    imported = set().union(*_distributions(set().union(*files.values())).values())
    assert EXTRAS["lakehouse"] - imported == set()


def test_the_databricks_extra_declares_what_the_notebooks_import() -> None:
    notebooks = REPO / "databricks" / "notebooks"
    imported_by_notebooks = set().union(*(_runtime_imports(p) for p in notebooks.glob("*.py")))
    package_modules = {n.split(".")[1] for n in imported_by_notebooks if n.count(".") == 1}
    assert package_modules <= NOTEBOOK_MODULES, "a notebook imports a module this test skips"
    assert _third_party(imported_by_notebooks) == set(), "notebooks import only the package"

    closure = _closure(NOTEBOOK_MODULES)
    assert {"lake.py", "fmp.py", "pipeline.py"} & closure.keys() == set(), sorted(closure)
    assert _undeclared(closure, EXTRAS["databricks"] | DATABRICKS_RUNTIME) == {}
    imported = set().union(*_distributions(set().union(*closure.values())).values())
    assert EXTRAS["databricks"] - imported == set()
    assert EXTRAS["databricks"] & DATABRICKS_RUNTIME == set(), "never replace the runtime's own"


@pytest.mark.parametrize("folder", ["tests", "benchmarks"])
def test_tests_and_benchmarks_import_only_declared_distributions(folder: str) -> None:
    declared = CORE | set().union(*EXTRAS.values()) | DEV
    files = {
        str(p.relative_to(REPO)): _third_party(_runtime_imports(p))
        for p in (REPO / folder).rglob("*.py")
    }
    # The folders themselves, and modules a script imports from beside it (benchmarks/figures.py).
    local = {"tests", "benchmarks", *(p.stem for p in (REPO / folder).glob("*.py"))}
    files = {f: modules - local for f, modules in files.items()}
    assert _undeclared(files, declared) == {}


def test_the_import_scan_sees_function_level_imports_and_skips_type_checking_ones() -> None:
    # The scan is what the other tests stand on: a lazy import still needs its distribution.
    imports = _runtime_imports(PACKAGE / "medallion_spark.py")
    assert "pyspark.sql" in imports  # imported inside a function
    assert "pyspark.sql.streaming.query" not in imports  # only under TYPE_CHECKING


def _cluster_wheel_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "cluster_wheel", REPO / "databricks" / "cluster_wheel.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cluster_wheel_requires_only_the_databricks_extra(tmp_path: Path) -> None:
    cluster_wheel = _cluster_wheel_module()
    info = "stock_pipeline-0.1.0.dist-info"
    metadata = (
        "Metadata-Version: 2.4\nName: stock-pipeline\nVersion: 0.1.0\n"
        "Requires-Dist: aiohttp>=3.9\nRequires-Dist: typer>=0.12\nProvides-Extra: lakehouse\n"
        'Requires-Dist: duckdb>=1.4; extra == "lakehouse"\n\nThe description.\n'
    )
    wheel = tmp_path / "stock_pipeline-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as built:
        built.writestr("stock_pipeline/__init__.py", "VALUE = 1\n")
        built.writestr(f"{info}/METADATA", metadata)
        built.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nTag: py3-none-any\n")
        built.writestr(f"{info}/entry_points.txt", "[console_scripts]\nx = y:z\n")
        built.writestr(f"{info}/RECORD", "stale\n")
    requirements = cluster_wheel.cluster_requirements(REPO / "pyproject.toml")
    assert requirements == PYPROJECT["project"]["optional-dependencies"]["databricks"]

    out = cluster_wheel.rewrite(wheel, requirements, tmp_path / "dist")

    assert out.name == "stock_pipeline-0.1.0+databricks-py3-none-any.whl"
    new_info = "stock_pipeline-0.1.0+databricks.dist-info"
    with zipfile.ZipFile(out) as rewritten:
        names = set(rewritten.namelist())
        assert names == {
            "stock_pipeline/__init__.py",
            f"{new_info}/METADATA",
            f"{new_info}/WHEEL",
            f"{new_info}/RECORD",
        }
        parsed = email.parser.Parser().parsestr(rewritten.read(f"{new_info}/METADATA").decode())
        assert parsed["Version"] == "0.1.0+databricks"
        assert parsed.get_all("Requires-Dist") == requirements
        assert parsed.get_all("Provides-Extra") is None
        assert parsed.get_payload() == "The description.\n"
        for line in rewritten.read(f"{new_info}/RECORD").decode().splitlines():
            path, digest, size = line.split(",")
            if path.endswith("RECORD"):
                continue
            data = rewritten.read(path)
            assert (digest, int(size)) == (cluster_wheel._digest(data), len(data)), path
