from training.config import compose, validate
from training.schedules import halt_exploration_prob, recursion_depth


def test_curriculum_grows_depth_monotonically_in_few_programs():
    cfg = validate(compose("contrib01_curriculum"))
    depths = [recursion_depth(cfg, e) for e in range(0, 12001, 50)]
    assert depths[0] == (1, 2) and depths[-1] == (cfg.arch.H_cycles, cfg.arch.L_cycles) == (3, 6)
    assert all(h2 >= h1 and l2 >= l1 for (h1, l1), (h2, l2) in zip(depths, depths[1:], strict=False))
    # Each distinct depth is one compiled program.
    assert len(set(depths)) <= (3 - 1) + (6 - 2) + 1
    assert recursion_depth(cfg, 10000) == (3, 6) == recursion_depth(cfg, 50000)


def test_without_curriculum_depth_is_fixed():
    cfg = validate(compose("contrib01_baseline"))
    assert recursion_depth(cfg, 0) == recursion_depth(cfg, 1e6) == (3, 6)


def test_halt_exploration_anneals_linearly():
    cfg = validate(compose("contrib02_adaptive"))
    assert halt_exploration_prob(cfg, 0, 1000) == 0.3
    assert abs(halt_exploration_prob(cfg, 500, 1000) - 0.175) < 1e-12
    assert abs(halt_exploration_prob(cfg, 1000, 1000) - 0.05) < 1e-12
    fixed = validate(compose("contrib02_baseline"))
    assert halt_exploration_prob(fixed, 0, 1000) == halt_exploration_prob(fixed, 999, 1000) == 0.1
