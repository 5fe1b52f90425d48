"""Runs the ladder for a selection of backends and turns each rung's checks into rows: one per backend x tier x impl x
mode x device x noise x rung (x step for the SGD trajectory), with the worst check's numbers. A backend, mode or device that
is missing gets a row that says so; a rung that raises gets an ``error`` row and the ladder goes on."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from backends import registry
from backends.contract.spec import TUNINGS, ModelSpec, TrainSpec
from backends.remote.client import RemoteError
from backends.remote.wire import one_line
from experiments.parity import ladder
from experiments.parity.case import Case
from experiments.parity.checks import Check, worst

COLUMNS = ["backend", "tuning", "impl", "mode", "device", "noise", "weight_decay", "rung", "rung_number", "step", "status",
           "passed", "max_abs_err", "max_rel_err", "tolerance", "criterion", "check", "checks", "framework_version",
           "matmul_precision", "rung_seconds", "detail"]
FAILED = ("failed", "error")


@dataclass(frozen=True)
class Selection:
    backends: Sequence[str]
    modes: Sequence[str]
    modes_named: bool  # --mode eager|compiled (a backend without it gets a row) rather than all
    impls: Sequence[str]
    noises: Sequence[str]
    device: str = "cpu"
    steps: int = ladder.DEFAULT_STEPS
    tunings: Sequence[str] = TUNINGS


def _row(case: Case, **values: Any) -> dict[str, Any]:
    return {"backend": case.backend, "tuning": case.tuning, "impl": case.impl, "mode": case.mode, "device": case.device,
            "noise": case.noise, "weight_decay": case.weight_decay, "rung": case.rung,
            "rung_number": ladder.RUNG_NUMBERS[case.rung], **values}


def _check_values(check: Check, count: int) -> dict[str, Any]:
    return {"status": "passed" if check.passed else "failed", "passed": check.passed,
            "max_abs_err": check.max_abs_err, "max_rel_err": check.max_rel_err, "tolerance": check.tolerance,
            "criterion": check.criterion, "check": check.what, "checks": count}


def case_rows(case: Case, checks: list[Check], extra: dict[str, Any]) -> list[dict[str, Any]]:
    """One row for the rung, or one per step when its checks carry steps (the worst check of each)."""
    steps = sorted({c.step for c in checks if c.step is not None})
    if not steps:
        return [_row(case, step=None, **_check_values(worst(checks), len(checks)), **extra)]
    rows = []
    for step in steps:
        of_step = [c for c in checks if c.step == step]
        rows.append(_row(case, step=step, **_check_values(worst(of_step), len(of_step)), **extra))
    return rows


def unavailable_row(backend: str, mode: str, device: str, reason: str, tuning: str = "-") -> dict[str, Any]:
    return {"backend": backend, "tuning": tuning, "impl": "-", "mode": mode, "device": device, "noise": "-", "rung": "-",
            "status": "unavailable", "passed": None, "detail": reason,
            "framework_version": registry.framework_version(backend) if backend in registry.REGISTRY else None}


def _probe(make, name: str, mode: str, device: str, tuning: str) -> tuple[str | None, str | None]:
    """(the matmul precision in force, None), or (None, why this backend cannot run here)."""
    try:
        backend = make(name, model=ModelSpec(), train=TrainSpec(mode=mode, device=device, tuning=tuning))
    except (ValueError, RemoteError, registry.BackendError) as exc:
        return None, one_line(exc).split(": ", 1)[-1].split("\n")[0]
    return str(backend.matmul_precision()), None


def run_backend(name: str, selection: Selection, make, fashion,
                report: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> list[dict[str, Any]]:
    info = registry.resolve(name)
    device = selection.device
    if name not in getattr(make, "classes", {}) and not registry.is_available(name):
        return [unavailable_row(name, "-", device, registry.unavailable_reason(name))]
    if device not in info.devices:
        return [unavailable_row(name, "-", device, f"{name} has no {device} device (it offers "
                                                   f"{', '.join(info.devices)})")]
    rows = [unavailable_row(name, mode, device, f"{name} has no {mode} mode (it offers {', '.join(info.modes)})")
            for mode in selection.modes if mode not in info.modes and selection.modes_named]
    modes = [mode for mode in selection.modes if mode in info.modes]
    precisions: dict[tuple[str, str], str] = {}
    for tuning in selection.tunings:
        for mode in modes:
            precision, reason = _probe(make, name, mode, device, tuning)
            if reason is not None:
                rows.append(unavailable_row(name, mode, device, reason, tuning))
            else:
                precisions[mode, tuning] = precision
    version = registry.framework_version(name)
    cases = [case for tuning in selection.tunings
             for case in ladder.cases(name, modes=[m for m in modes if (m, tuning) in precisions],
                                      impls=selection.impls, noises=selection.noises, device=device,
                                      steps=selection.steps, tunings=(tuning,))]
    for case in cases:
        start = time.perf_counter()
        try:
            checks = case(make, fashion)
        except Exception as exc:  # noqa: BLE001 - a broken backend is what the ladder is for; the others go on
            rows.append(_row(case, status="error", passed=False, detail=one_line(exc).split("\n")[0],
                             framework_version=version, matmul_precision=precisions[case.mode, case.tuning],
                             rung_seconds=time.perf_counter() - start))
            continue
        extra = {"framework_version": version, "matmul_precision": precisions[case.mode, case.tuning],
                 "rung_seconds": time.perf_counter() - start}
        rows.extend(case_rows(case, checks, extra))
    for mode, tuning in precisions:
        done = [r for r in rows if r["mode"] == mode and r["tuning"] == tuning and r["rung"] != "-"]
        failed = sorted({r["rung"] for r in done if r["status"] in FAILED})
        report(f"parity: {name} {tuning} {mode}: {len(done) - sum(r['status'] in FAILED for r in done)}/{len(done)} rows "
               f"passed" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return rows


def failures(rows: list[dict[str, Any]]) -> list[str]:
    """``backend mode impl noise: rung (check)`` for every failing rung, once (the SGD steps folded)."""
    seen: dict[tuple[str, str], str] = {}
    for r in rows:
        if r["status"] in FAILED:
            where = f"{r['backend']} {r.get('tuning', 'stock')} {r['mode']} {r['impl']} {r['noise']}" + (
                f" wd {r['weight_decay']:g}" if r.get("weight_decay") else "")
            step = f", first at step {r['step']}" if r.get("step") is not None else ""
            seen.setdefault((where, r["rung"]), f"{where}: rung {ladder.RUNG_NUMBERS[r['rung']]} {r['rung']} "
                                                f"({r.get('check') or r.get('detail')}{step})")
    return list(seen.values())
