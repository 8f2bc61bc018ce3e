"""What a run costs, for summary.json's `cost`: device kind and count, wall time split into
compilation, training, evaluation and checkpointing, device-hours, examples/s and achieved MFU.

Compilation time comes from JAX's own compile events (tracing, lowering to MLIR, XLA compilation
or a persistent-cache load), which JAX records as time spans on the host, so measuring it adds no
host sync to the training loop. Evaluation and checkpointing are timed around their calls, which
wait for the devices anyway, less any compilation inside them; training is the rest of the loop.
Setup (opening data, building and restoring the state) is outside the loop and counts only towards
device-hours. Totals carry over a resume through the checkpoint's meta, so a preempted run's
summary covers every session up to its last checkpoint.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import jax

COMPILE_EVENTS = frozenset(
    {
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    }
)
SECTIONS = ("eval", "checkpoint")
# What a checkpoint carries over to the next session (seconds, steps, FLOPs).
CARRIED = ("setup_s", "compile_s", "train_s", "eval_s", "checkpoint_s", "device_s", "train_device_s", "steps", "flops")


def covered(spans: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Seconds of [lo, hi] covered by the union of `spans` (overlapping spans count once)."""
    total, reach = 0.0, lo
    for start, end in sorted(spans):
        start, end = max(start, reach), min(end, hi)
        if end > start:
            total += end - start
            reach = end
    return total


class CostClock:
    """Accumulates one session's cost from its construction (the start of the training loop) on,
    on top of `prior` (the totals saved with the checkpoint it resumed from)."""

    def __init__(self, *, session_start: float, num_devices: int, prior: Mapping[str, float] | None = None):
        self.num_devices = num_devices
        self.prior = {k: float((prior or {}).get(k, 0.0)) for k in CARRIED}
        self.session_start = session_start
        self.loop_start = time.time()
        self.steps = 0
        self.flops = 0.0
        self._compile: list[tuple[float, float]] = []
        self._sections: dict[str, list[tuple[float, float]]] = {k: [] for k in SECTIONS}
        self._lock = threading.Lock()
        jax.monitoring.register_event_time_span_listener(self._on_span)

    def _on_span(self, event: str, start: float, end: float, **_: Any) -> None:
        if event in COMPILE_EVENTS:
            with self._lock:
                self._compile.append((start, end))

    def close(self) -> None:
        with contextlib.suppress(AssertionError):  # already closed
            jax.monitoring.unregister_event_time_span_listener(self._on_span)

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        start = time.time()
        try:
            yield
        finally:
            self._sections[name].append((start, time.time()))

    def add_steps(self, n: int, flops: float) -> None:
        """`n` optimizer steps dispatched, `flops` analytic FLOPs in all (host arithmetic only)."""
        self.steps += n
        self.flops += flops

    def totals(self) -> dict[str, float]:
        """Every carried total so far: the prior sessions' plus this one's."""
        now = time.time()
        with self._lock:
            spans = list(self._compile)
        compile_s = covered(spans, self.loop_start, now)
        out = {"compile_s": compile_s}
        for name, intervals in self._sections.items():
            wall = sum(end - start for start, end in intervals)
            out[f"{name}_s"] = wall - sum(covered(spans, start, end) for start, end in intervals)
        out["train_s"] = now - self.loop_start - compile_s - sum(out[f"{k}_s"] for k in SECTIONS)
        out["setup_s"] = self.loop_start - self.session_start
        out["device_s"] = (now - self.session_start) * self.num_devices
        out["train_device_s"] = out["train_s"] * self.num_devices
        out.update(steps=self.steps, flops=self.flops)
        return {k: self.prior[k] + out[k] for k in CARRIED}


def summary(totals: Mapping[str, float], *, global_batch_size: int, peak_tflops: float | None) -> dict[str, Any]:
    """summary.json's `cost`: device-hours are every device held for the whole run, setup
    included; examples/s and MFU (analytic training FLOPs over `peak_tflops` per device) count
    training time only."""
    train_s, devices = totals["train_s"], jax.devices()
    return {
        "device_kind": devices[0].device_kind,
        "num_devices": len(devices),
        **{k: totals[k] for k in ("setup_s", "compile_s", "train_s", "eval_s", "checkpoint_s")},
        "device_hours": totals["device_s"] / 3600,
        "steps": int(totals["steps"]),
        "train_flops": totals["flops"],
        "examples_per_s": totals["steps"] * global_batch_size / train_s if train_s > 0 else None,
        "mfu": (
            totals["flops"] / (totals["train_device_s"] * peak_tflops * 1e12)
            if peak_tflops and totals["train_device_s"] > 0
            else None
        ),
    }
