"""Messages cross processes and NumPy versions (the MXNet venv runs numpy 1.23) without pickle."""
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import backends
from backends.remote import wire
from backends.contract import EpochBatches, EpochMetrics
from tests.conftest import require_backend

MXNET_PYTHON = Path(backends.REGISTRY["mxnet"].interpreter)


def sample_message():
    return {"ok": {"dense_0/kernel": np.arange(6, dtype=np.float32).reshape(2, 3), "loss": np.float32(0.5),
                   "metrics": EpochMetrics(loss=0.25, acc=0.75), "list": [np.int64(3), np.ones(2, np.int32)],
                   (1, "x"): "tuple keys come back as tuples"}}


def test_round_trip_keeps_arrays_dtypes_and_dataclasses():
    stream = io.BytesIO()
    wire.send(stream, sample_message())
    stream.seek(0)
    out = wire.receive(stream)["ok"]
    np.testing.assert_array_equal(out["dense_0/kernel"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert out["dense_0/kernel"].dtype == np.float32 and out["list"][1].dtype == np.int32
    assert out["metrics"] == EpochMetrics(loss=0.25, acc=0.75) and out["loss"] == 0.5
    assert out[(1, "x")] == "tuple keys come back as tuples"
    with pytest.raises(EOFError):
        wire.receive(stream)


def test_no_pickle_is_accepted():
    buffer = io.BytesIO()
    np.savez(buffer, __json__=np.frombuffer(b'{"__array__": "a0"}', dtype=np.uint8),
             a0=np.array([object()], dtype=object))
    with pytest.raises(ValueError):
        wire.decode(buffer.getvalue())


def test_numpy_1_23_reads_and_writes_the_same_messages():
    """An echo through the MXNet venv's interpreter: numpy 2 -> numpy 1.23 -> numpy 2."""
    require_backend("mxnet")
    echo = "import sys; from backends.remote import wire; wire.send(sys.stdout.buffer, wire.receive(sys.stdin.buffer))"
    batches = EpochBatches(x=np.ones((4, 3), np.float32), y=np.arange(4, dtype=np.int32), order=np.arange(4),
                           batch_size=2)
    request = io.BytesIO()
    wire.send(request, {"batches": batches, "msg": sample_message()})
    result = subprocess.run([str(MXNET_PYTHON), "-c", echo], input=request.getvalue(), capture_output=True,
                            cwd=backends.PROJECT_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    out = wire.decode(result.stdout[8:])
    np.testing.assert_array_equal(out["batches"].x, batches.x)
    assert out["batches"].batch_size == 2
    np.testing.assert_array_equal(out["msg"]["ok"]["dense_0/kernel"], sample_message()["ok"]["dense_0/kernel"])


WORKER_SIDE = ("backends", "backends.contract", "backends.registry", "backends.remote.wire", "backends.remote.client",
               "backends.remote.serve", "experiments.running.plan", "experiments.data", "experiments.exercises.probes",
               "experiments.running.worker")
ORCHESTRATION = ("experiments.running.runner", "experiments.report.writer", "experiments.catalog", "experiments.cli",
                 "experiments.commands.bench")


@pytest.mark.parametrize("modules,banned", [
    (WORKER_SIDE, ("torch", "jax", "tensorflow", "mxnet", "flax", "keras", "pandas", "matplotlib")),
    (ORCHESTRATION, ("torch", "jax", "tensorflow", "mxnet", "flax", "keras")),
])
def test_shared_modules_import_without_any_framework(modules, banned):
    """The worker's modules run under every interpreter (the MXNet venv has no pandas); none imports a framework."""
    code = (f"import sys, {', '.join(modules)}; "
            f"bad = [m for m in {banned!r} if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=backends.PROJECT_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_backend_server_exits_quietly_when_its_client_is_gone():
    """The parity command's MXNet server outlives a client killed by a signal only until its next reply: it then
    exits with status 0 and nothing on stderr (it used to print two BrokenPipeError tracebacks into the terminal)."""
    server = subprocess.Popen([sys.executable, "-m", "backends.remote.serve", "--backend", "numpy"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              cwd=backends.PROJECT_ROOT)
    try:
        server.stdout.close()  # the client's end of the replies: gone, as when its process dies
        wire.send(server.stdin, {"method": "__init__", "kwargs": {"model": {}, "train": {}}})
        server.stdin.close()
        assert server.wait(timeout=120) == 0
        assert server.stderr.read().decode() == ""
    finally:
        if server.poll() is None:
            server.kill()
