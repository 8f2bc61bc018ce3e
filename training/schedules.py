"""Host-side schedules of the scaling study's contributions.

The recursion depth is a compile-time constant of the train step, so the curriculum changes it
in whole cycles: the depth moves monotonically from the start to the full values, giving at
most (H_cycles - start_H) + (L_cycles - start_L) + 1 distinct programs, each compiled once and
cached. The halting-exploration probability is a runtime argument and never recompiles.
"""

from __future__ import annotations

from training.config import PretrainConfig


def recursion_depth(cfg: PretrainConfig, epochs_done: float) -> tuple[int, int]:
    """(H_cycles, L_cycles) after `epochs_done` epochs."""
    a, c = cfg.arch, cfg.curriculum
    if not c.enabled:
        return a.H_cycles, a.L_cycles
    f = min(1.0, epochs_done / c.epochs) if c.epochs > 0 else 1.0
    return round(c.start_H_cycles + f * (a.H_cycles - c.start_H_cycles)), round(
        c.start_L_cycles + f * (a.L_cycles - c.start_L_cycles)
    )


def halt_exploration_prob(cfg: PretrainConfig, step: int, total_steps: int) -> float:
    s = cfg.halt_exploration_schedule
    if not s.enabled:
        return cfg.arch.halt_exploration_prob
    return s.start + (s.end - s.start) * min(1.0, step / max(1, total_steps))
