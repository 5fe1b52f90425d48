"""The layout keeps its promises: imports point one way (experiments -> backends), no import cycle anywhere (imports
inside functions included), a framework is imported only by its own backend package, the five backend packages hold
the same modules, no stock module imports a tuned one, and modules stay small (the backends' too)."""
from __future__ import annotations

import ast
import graphlib
import shutil
from pathlib import Path

import pytest

import backends

ROOT = backends.PROJECT_ROOT
PACKAGES = ("backends", "experiments")
FRAMEWORKS = {"torch": "backends.torch", "jax": "backends.jax", "flax": "backends.jax", "optax": "backends.jax",
              "tensorflow": "backends.tensorflow", "keras": "backends.tensorflow", "mxnet": "backends.mxnet"}
BACKEND_MODULES = ("__init__", "model", "backend", "tuned", "probes")  # the same in every framework's package
STOCK_MODULES = ("model", "backend")
MAX_LINES = 400


def project_modules(root: Path) -> dict[str, Path]:
    modules = {"harness": root / "harness.py"}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def imported_names(path: Path, modules: dict[str, Path] | None = None) -> set[str]:
    """Every module an import statement names, wherever it stands (top level, function, try block). Given the
    project's ``modules``, ``from a import b`` where b is one of them names a.b only (nothing of a's own is used)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names}
            names.update(submodules)
            if modules is None or not submodules <= set(modules):
                names.add(node.module)
    return names


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the project modules it imports (``from a import b`` counts as a.b when b is a module)."""
    modules = project_modules(root)
    return {name: {n for n in imported_names(path, modules) if n in modules and n != name}
            for name, path in modules.items()}


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{module} imports {target}" for module, targets in graph.items() for target in targets
                  if module.split(".")[0] == "backends" and target.split(".")[0] == "experiments")


def cycles(graph: dict[str, set[str]]) -> list[str]:
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        return [" -> ".join(exc.args[1])]
    return []


def test_backends_never_import_experiments():
    assert layering_violations(import_graph(ROOT)) == []


def test_there_is_no_import_cycle():
    assert cycles(import_graph(ROOT)) == []


def test_the_checks_fail_on_a_backward_import_and_on_a_cycle(tmp_path):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "harness.py", tmp_path / "harness.py")
    assert layering_violations(import_graph(tmp_path)) == [] and cycles(import_graph(tmp_path)) == []
    numpy_backend = tmp_path / "backends" / "numpy" / "backend.py"
    numpy_backend.write_text(numpy_backend.read_text() + "\n\ndef late():\n    from experiments.running import plan\n")
    assert "backends.numpy.backend imports experiments.running.plan" in layering_violations(import_graph(tmp_path))
    assert cycles(import_graph(tmp_path)) == []  # one-way still: nothing in experiments.running.plan leads back
    plan = tmp_path / "experiments" / "running" / "plan.py"
    plan.write_text(plan.read_text() + "\nimport experiments.running.runner  # noqa\n")
    assert cycles(import_graph(tmp_path)) != []  # runner -> plan -> runner


def test_a_framework_is_imported_only_by_its_own_backend():
    offenders = []
    for name, path in project_modules(ROOT).items():
        for imported in imported_names(path):
            owner = FRAMEWORKS.get(imported.split(".")[0])
            if owner is not None and name != owner and not name.startswith(owner + "."):
                offenders.append(f"{name} imports {imported}")
    assert offenders == []


def test_every_module_stays_small_the_backends_included():
    long = {name: n for name, path in project_modules(ROOT).items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_backend_packages_hold_the_same_modules():
    listings = {name: sorted(p.stem for p in (ROOT / "backends" / name).glob("*.py")) for name in backends.REGISTRY}
    assert all(listing == sorted(BACKEND_MODULES) for listing in listings.values()), listings
    assert not list((ROOT / "backends").glob("*_backend.py"))


def stock_imports_of_tuned(root: Path) -> list[str]:
    graph = import_graph(root)
    return sorted(f"{module} imports {target}" for module, targets in graph.items() for target in targets
                  if module.split(".")[-1] in STOCK_MODULES and module.count(".") == 2 and target.endswith(".tuned"))


def test_no_stock_module_imports_a_tuned_one(tmp_path):
    assert stock_imports_of_tuned(ROOT) == []
    shutil.copytree(ROOT / "backends", tmp_path / "backends", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "experiments").mkdir()
    shutil.copy(ROOT / "harness.py", tmp_path / "harness.py")
    model = tmp_path / "backends" / "numpy" / "model.py"
    model.write_text(model.read_text() + "\n\ndef late():\n    from backends.numpy import tuned\n")
    assert stock_imports_of_tuned(tmp_path) == ["backends.numpy.model imports backends.numpy.tuned"]


@pytest.mark.parametrize("name", sorted(backends.REGISTRY))
def test_every_backend_takes_its_capabilities_from_the_registry(name):
    """Modes and devices are declared once, in the registry; the backend class must not declare its own."""
    info = backends.resolve(name)
    source = (ROOT / Path(*info.package.split(".")) / "backend.py").read_text()
    assert f'capabilities = registry.capabilities("{name}")' in source
    assert "Capabilities(" not in source
