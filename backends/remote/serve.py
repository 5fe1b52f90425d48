"""``python -m backends.remote.serve --backend NAME``: one backend answering method calls framed by ``wire``.

The other end is ``backends.remote.client.RemoteBackend``: the parity tests reach the MXNet backend this way (its venv
pins numpy 1.23), and can reach any backend the way the runner runs it, in a process of its own.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Any

from backends import registry
from backends.contract import ModelSpec, TrainSpec
from backends.remote import wire


def serve(backend_name: str) -> int:
    """Answer calls until stdin closes: {"method", "kwargs"} -> {"ok": value} or {"error": text}."""
    channel = wire.claim_stdout(binary=True)
    requests = sys.stdin.buffer
    backend = None
    while True:
        try:
            request = wire.receive(requests)
        except EOFError:
            return 0
        closing = False
        try:
            method, kwargs = request["method"], request.get("kwargs", {})
            if method == "__init__":
                model, train = ModelSpec(**kwargs["model"]), TrainSpec(**kwargs["train"])
                backend_class = registry.load_class(backend_name, train.tuning)
                backend = backend_class(model=model, train=train, threads=kwargs.get("threads"))
                reply: Any = {"ok": {"version": backend_class.version(), "capabilities": backend.capabilities.__dict__}}
            elif method == "__exit__":
                reply, closing = {"ok": None}, True
            else:
                if backend is None:
                    raise RuntimeError("call __init__ first")
                reply = {"ok": getattr(backend, method)(**kwargs)}
        except Exception as exc:
            reply = {"error": wire.one_line(exc), "traceback": traceback.format_exc()}
        try:
            wire.send(channel, reply)
        except BrokenPipeError:  # the client's process is gone (a signal ended it): nobody is left to answer
            os.dup2(os.open(os.devnull, os.O_WRONLY), channel.fileno())  # so that the exit's flush is quiet too
            return 0
        if closing:
            return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backends.remote.serve")
    parser.add_argument("--backend", required=True)
    return serve(parser.parse_args(argv).backend)


if __name__ == "__main__":
    sys.exit(main())
