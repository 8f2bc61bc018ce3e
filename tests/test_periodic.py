"""What is due after each step, with integers alone (no training)."""

from training.periodic import Periodic, steps_per_eval


def _evals(p: Periodic, start: int = 0) -> list[int]:
    return [s for s in range(start + 1, p.end_step + 1) if p.due(s).evaluate]


def _official_eval_steps(*, intervals: int, spe: int, min_eval_interval: int) -> list[int]:
    """The official loop, written out: `for i in range(intervals): train one interval; if i >=
    min_eval_interval: evaluate` - its last evaluation is our final one."""
    return [(i + 1) * spe for i in range(intervals) if i >= min_eval_interval]


def test_evaluations_follow_the_official_loop_plus_one_final():
    for min_eval in (0, 1, 3, 5):
        p = Periodic(end_step=50, steps_per_eval=10, min_eval_interval=min_eval, log_every_steps=7)
        official = _official_eval_steps(intervals=5, spe=10, min_eval_interval=min_eval)
        # Our final evaluation (after step 50, always) stands in for the official last one.
        assert _evals(p) == [s for s in official if s != 50], min_eval
        assert p.due(50).final and not p.due(50).evaluate


def test_a_periodic_eval_that_nearly_repeats_the_final_one_is_skipped():
    # quick start: 1562 steps, 312 per interval: intervals end at 312 ... 1560, the run at 1562
    spe = steps_per_eval(total_steps=1562, epochs=100, eval_interval=20)
    p = Periodic(end_step=1562, steps_per_eval=spe, min_eval_interval=0, log_every_steps=10)
    assert spe == 312
    assert _evals(p) == [312, 624, 936, 1248]
    assert p.due(1560).interval_end and not p.due(1560).evaluate


def test_max_steps_ends_early_and_evaluates_only_what_comes_before():
    p = Periodic(end_step=25, steps_per_eval=10, min_eval_interval=0, log_every_steps=100)
    assert _evals(p) == [10]  # 20 is within one interval of the end (25)
    assert p.due(25).final and p.due(25).log  # the last step is always logged
    assert not any(p.due(s).final for s in range(1, 25))


def test_resuming_mid_interval_keeps_the_schedule():
    p = Periodic(end_step=100, steps_per_eval=20, min_eval_interval=1, log_every_steps=10)
    full = _evals(p)
    assert full == [40, 60, 80]  # interval 0 is skipped (min_eval_interval=1); 100 is the final
    assert _evals(p, start=33) == [s for s in full if s > 33]
    assert [s for s in range(34, 101) if p.due(s).log] == list(range(40, 101, 10))


def test_logging_every_k_steps_and_at_the_end():
    p = Periodic(end_step=23, steps_per_eval=100, min_eval_interval=0, log_every_steps=5)
    assert [s for s in range(1, 24) if p.due(s).log] == [5, 10, 15, 20, 23]
    assert _evals(p) == []


def test_steps_per_eval_is_at_least_one():
    assert steps_per_eval(total_steps=3, epochs=100, eval_interval=1) == 1
    assert steps_per_eval(total_steps=8138, epochs=50000, eval_interval=5000) == 813
