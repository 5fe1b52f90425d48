"""The Ray executor: each job is one Ray task (``num_cpus`` = its threads, one GPU for a GPU job, a fresh Ray worker
per task) that starts the job's ordinary worker process on the node where it lands and streams the worker's events
back as they happen (a streaming generator task), so the runner writes the same rows as with the local executor.

A task that dies (its worker killed, its node lost) is not retried: the epochs it streamed are already rows, and
running it again from its start is what ``--resume`` does. Ray is an optional extra, imported only here.
"""
from __future__ import annotations

import os
import queue
import socket
import threading
import time
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # before ray is imported: no usage reports from any run

import ray  # noqa: E402

from backends import registry  # noqa: E402
from experiments.running.executors.base import Launch  # noqa: E402
from experiments.running.executors.process import start_worker, stream_events  # noqa: E402
from experiments.options import UsageError  # noqa: E402

LOG_LIMIT = 1 << 20  # bytes of a worker's stderr sent back with its last event
CONNECT_WAIT = 120.0  # seconds to reach or start the cluster
DRAIN_WAIT = 20.0  # seconds to wait for cancelled tasks' streams to end


def job_task(backend: str, request: dict[str, Any], threads: int, label: str, all_cpus: bool):
    """Runs on the node: a "placed" event, then the worker's events, then "exit" with the worker's stderr."""
    if all_cpus:
        threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", threads)))
        request = dict(request, threads=threads)
    yield {"event": "placed", "host": socket.gethostname(), "node": ray.get_runtime_context().get_node_id()}
    import tempfile

    events: queue.Queue = queue.Queue()
    with tempfile.TemporaryFile("w+") as log:
        process = start_worker(backend, request, threads=threads, label=label, log=log)

        def pump() -> None:
            events.put({"event": "exit", "code": stream_events(process, events.put)})

        threading.Thread(target=pump, daemon=True).start()
        while True:
            event = events.get()
            if event.get("event") == "exit":
                log.flush()
                log.seek(0)
                event["log"] = log.read()[-LOG_LIMIT:]
                yield event
                return
            yield event


def reachable(address: str) -> None:
    """Refuse at once a ``host:port`` that nothing answers on, or where something other than a Ray head answers:
    ray.init would retry for minutes, in C code that a signal does not interrupt, against a port of another server
    (20 attempts of about 40 s against an HTTP server)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return  # "auto", "ray://...": left to Ray
    wait = CONNECT_WAIT / 24
    try:
        socket.create_connection((host, int(port)), timeout=wait).close()
    except OSError as exc:
        raise UsageError(f"--ray-address {address}: nothing answers there ({exc.strerror or exc}); start the "
                         f"head with ray start --head, or check the address") from None
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    # The first call ray.init makes of the head's GCS, with a deadline. A head with token authentication refuses
    # the call without the token, which still says that Ray's GCS answers.
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        try:
            gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
                gcs_service_pb2.GetClusterIdRequest(), timeout=wait)
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                raise UsageError(f"--ray-address {address}: something answers there, but not a Ray head's GCS "
                                 f"({exc.code().name.lower()}); give the head's address (ray start --head prints "
                                 f"it; the default port is 6379)") from None


class RayExecutor:
    name = "ray"

    def __init__(self, *, address: str | None, threads: int, all_cpus_of_node: bool = False) -> None:
        # Tasks import this project on every node from the same path as here (the README's cluster section).
        runtime_env = {"env_vars": {"PYTHONPATH": str(registry.PROJECT_ROOT), "RAY_USAGE_STATS_ENABLED": "0"}}
        try:  # the address was checked by the command before the run's folder was made (check_ray_address)
            if address:
                ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
            else:  # a Ray instance of this run alone, stopped by shutdown()
                ray.init(include_dashboard=False, runtime_env=runtime_env, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise UsageError(f"cannot reach {where} ({' '.join(str(exc).split())[:200]}); check --ray-address "
                             f"and that the cluster runs (ray status)") from None
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        cpus = [int(n["Resources"].get("CPU", 0)) for n in nodes]
        self.cpus_per_job = max(cpus) if all_cpus_of_node else threads
        # As many tasks in flight as the cluster can start at once, so that none waits in Ray's queue while the
        # runner's job timeout runs.
        self.capacity = max(1, sum(c // self.cpus_per_job for c in cpus))
        self.all_cpus = all_cpus_of_node
        self.remote = ray.remote(max_calls=1, max_retries=0)(job_task)
        self.generators: dict[int, Any] = {}
        self.readers: dict[int, threading.Thread] = {}
        self.closed = False

    def submit(self, slot: int, launch: Launch, sink: queue.Queue) -> None:
        generator = self.remote.options(num_cpus=self.cpus_per_job, num_gpus=1 if launch.gpu else 0).remote(
            launch.backend, launch.request, launch.threads, launch.label, self.all_cpus)
        self.generators[slot] = generator
        reader = threading.Thread(target=self._read, args=(slot, generator, sink), daemon=True)
        self.readers[slot] = reader
        reader.start()

    @staticmethod
    def _read(slot: int, generator, sink: queue.Queue) -> None:
        ended = False
        try:
            for ref in generator:
                event = ray.get(ref)
                ended = ended or event.get("event") == "exit"
                sink.put((slot, event))
        except ray.exceptions.TaskCancelledError:
            sink.put((slot, {"event": "exit", "code": None, "error": "ray task cancelled; not retried"}))
            return
        except ray.exceptions.RayError as exc:  # worker crashed, node died, object lost
            reason = " ".join(str(exc).split())[:300]
            sink.put((slot, {"event": "exit", "code": None,
                             "error": f"ray task failed ({type(exc).__name__}: {reason}); not retried"}))
            return
        if not ended:
            sink.put((slot, {"event": "exit", "code": None, "error": "ray task ended without the worker's exit"}))

    def process(self, slot: int) -> None:
        return None

    def kill(self, slot: int) -> None:
        generator = self.generators.get(slot)
        if generator is not None:
            ray.cancel(generator, force=True)

    def shutdown(self) -> None:
        """Cancel every task still running (force: Ray kills their processes; their workers see their parent go
        and exit), wait for the streams to end, and disconnect (stopping the Ray instance this run started)."""
        if self.closed:
            return
        self.closed = True
        for slot, reader in self.readers.items():
            if reader.is_alive():
                try:
                    ray.cancel(self.generators[slot], force=True)
                except Exception:  # noqa: BLE001 - a task that finished meanwhile cannot be cancelled
                    pass
        deadline = time.monotonic() + DRAIN_WAIT
        for reader in self.readers.values():
            reader.join(timeout=max(0.0, deadline - time.monotonic()))
        ray.shutdown()
