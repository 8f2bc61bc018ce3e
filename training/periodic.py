"""What is due after an optimizer step: a pure function of integers, tested without training.

Evaluation follows the official loop: training runs in intervals of `eval_interval` epochs and
after interval `i` (0-based) the model is evaluated if `i >= min_eval_interval`. This project
always evaluates once more after the last step (the final evaluation, on every run, also one cut
short by `max_steps`), so a periodic evaluation less than one interval before the end is skipped:
it would nearly repeat the final one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Due:
    log: bool
    evaluate: bool
    interval_end: bool  # an eval interval just ended (the official loop's checkpoint point)
    final: bool


@dataclass(frozen=True)
class Periodic:
    end_step: int
    steps_per_eval: int
    min_eval_interval: int
    log_every_steps: int

    def due(self, step: int) -> Due:
        """What to do after optimizer step `step` (steps counted from 1)."""
        final = step >= self.end_step
        interval_end = step % self.steps_per_eval == 0
        interval = step // self.steps_per_eval - 1  # 0-based index of the interval that just ended
        evaluate = (
            interval_end
            and interval >= self.min_eval_interval
            and not final
            and self.end_step - step >= self.steps_per_eval
        )
        return Due(
            log=final or step % self.log_every_steps == 0, evaluate=evaluate, interval_end=interval_end, final=final
        )


def steps_per_eval(*, total_steps: int, epochs: int, eval_interval: int) -> int:
    """Optimizer steps per evaluation interval (at least 1)."""
    return max(1, total_steps * eval_interval // epochs)
