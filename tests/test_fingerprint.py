"""The fingerprint sees all the code a job runs: every project module the worker imports for the job's backend, found
by a rule (the backend's package, and the import closure of it and of the worker), so that an edit of any of them,
or a new module, makes ``--resume`` rerun the backend's jobs; code that does not compute a job's numbers does not."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

import backends
from experiments.running import fingerprint
from tests.helpers import read_csv

ROOT = backends.PROJECT_ROOT


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A copy of the project's code (its two packages and the harness), to edit freely."""
    root = tmp_path_factory.mktemp("tree")
    for package in ("backends", "experiments"):
        shutil.copytree(ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "harness.py", root / "harness.py")
    return root


def edited(path, text="\n# an edit\n"):
    """Append ``text`` to ``path``; returns the original bytes."""
    original = path.read_bytes()
    path.write_bytes(original + text.encode())
    return original


@pytest.mark.parametrize("backend", list(backends.REGISTRY))
def test_an_edit_of_any_module_a_job_runs_changes_its_backends_fingerprint(tree, backend):
    files = fingerprint.source_files(backend, tree)
    relative = {str(p.relative_to(tree)) for p in files}
    package = backends.resolve(backend).package.replace(".", "/")
    # the rule finds what the worker runs: the backend's every module, the registry, the worker and its imports
    assert {str(p.relative_to(tree)) for p in (tree / package).glob("*.py")} <= relative
    assert {"experiments/running/worker.py", "backends/registry.py", "backends/contract/backend.py",
            "backends/contract/timing.py", "experiments/data.py", "experiments/exercises/probes.py",
            "backends/remote/wire.py", "experiments/bench/floor.py", "experiments/__init__.py"} <= relative
    before = fingerprint.compute_source_digest(backend, tree)
    for path in files:
        original = edited(path)
        try:
            assert fingerprint.compute_source_digest(backend, tree) != before, f"an edit of {path} went unseen"
        finally:
            path.write_bytes(original)
    assert fingerprint.compute_source_digest(backend, tree) == before


def test_the_numpy_tuned_step_and_its_blas_calls_are_in_numpys_fingerprint_and_not_in_torchs(tree):
    numpy_files = {str(p.relative_to(tree)) for p in fingerprint.source_files("numpy", tree)}
    assert {"backends/numpy/backend.py", "backends/numpy/tuned.py"} <= numpy_files
    torch_files = {str(p.relative_to(tree)) for p in fingerprint.source_files("torch", tree)}
    assert not any(name.startswith("backends/numpy/") for name in torch_files)
    torch_before = fingerprint.compute_source_digest("torch", tree)
    original = edited(tree / "backends" / "numpy" / "tuned.py")
    try:
        assert fingerprint.compute_source_digest("torch", tree) == torch_before
    finally:
        (tree / "backends" / "numpy" / "tuned.py").write_bytes(original)


def test_a_new_module_of_a_backend_package_changes_the_fingerprint(tree):
    before = fingerprint.compute_source_digest("numpy", tree)
    added = tree / "backends" / "numpy" / "newpart.py"
    added.write_text("SCALE = 2\n")
    try:
        assert added in fingerprint.source_files("numpy", tree)
        after = fingerprint.compute_source_digest("numpy", tree)
        assert after != before
        edited(added)
        assert fingerprint.compute_source_digest("numpy", tree) != after
    finally:
        added.unlink()


def test_a_new_module_that_the_shared_code_imports_is_followed(tree):
    """A module added anywhere in the project and imported by code a job runs (here from the contract, with a
    relative import) joins every backend's fingerprint."""
    added = tree / "backends" / "contract" / "extra_rule.py"
    added.write_text("LIMIT = 1\n")
    init = tree / "backends" / "contract" / "__init__.py"
    original = edited(init, "\nfrom . import extra_rule  # noqa: F401\n")
    try:
        for backend in backends.REGISTRY:
            assert added in fingerprint.source_files(backend, tree)
        before = fingerprint.compute_source_digest("jax", tree)
        edited(added)
        assert fingerprint.compute_source_digest("jax", tree) != before
    finally:
        init.write_bytes(original)
        added.unlink()


def test_code_that_does_not_compute_a_jobs_numbers_leaves_the_fingerprint_alone(tree):
    """The report, the executors and the runner (where and how a job runs, what is written about it), and the lazy
    ``experiments.run`` of the package's PEP 562 hook, are not what a worker imports."""
    files = {str(p.relative_to(tree)) for p in fingerprint.source_files("numpy", tree)}
    for name in ("experiments/report/writer.py", "experiments/running/runner.py",
                 "experiments/running/executors/local.py", "experiments/api.py", "experiments/compare.py"):
        assert name not in files
    before = fingerprint.compute_source_digest("numpy", tree)
    original = edited(tree / "experiments" / "report" / "writer.py")
    try:
        assert fingerprint.compute_source_digest("numpy", tree) == before
    finally:
        (tree / "experiments" / "report" / "writer.py").write_bytes(original)


def test_the_cached_digest_sees_an_edit_made_while_the_process_runs(tree):
    """A notebook runs, edits a backend, runs again with ``resume=True``: the second plan must see the edit."""
    path = tree / "backends" / "numpy" / "model.py"
    before = fingerprint.source_digest("numpy", tree)
    original = edited(path, "\n# a longer edit, so that the file's size changes too\n")
    try:
        assert fingerprint.source_digest("numpy", tree) != before
    finally:
        path.write_bytes(original)


def test_after_an_edit_of_the_numpy_tuned_step_a_resume_reruns_the_numpy_jobs(tree, tmp_path):
    """End to end, in the copy of the project: a finished NumPy run, an edit of the tuned step's module, and
    ``--resume --dry-run`` says every NumPy job would run again (stale); before the edit it reuses them all."""
    from experiments import data

    out = tmp_path / "run"
    args = [sys.executable, str(tree / "harness.py"), "--backend", "numpy", "--epochs", "1", "--train-limit", "500",
            "--threads", "1", "--seeds", "0", "1", "--data-dir", str(data.locate(download=False, progress=False)),
            "--out", str(out)]
    first = subprocess.run(args, cwd=tree, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert {r["status"] for r in read_csv(out / "summary.csv")} == {"ok"}
    same = subprocess.run([*args, "--resume", "--dry-run"], cwd=tree, capture_output=True, text=True, timeout=600)
    assert "2 jobs: 0 to run, 2 reused" in same.stdout, same.stdout + same.stderr
    step = tree / "backends" / "numpy" / "tuned.py"
    original = edited(step)
    try:
        stale = subprocess.run([*args, "--resume", "--dry-run"], cwd=tree, capture_output=True, text=True,
                               timeout=600)
    finally:
        step.write_bytes(original)
    assert "2 jobs: 2 to run, 0 reused" in stale.stdout and "run (stale)" in stale.stdout, stale.stdout + stale.stderr
