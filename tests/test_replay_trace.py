"""Our train step follows the official training trajectory (100 optimizer steps of the quick-start
configuration, recorded from the official PyTorch loop), and the replay notices when it does not."""

from pathlib import Path

import jax
import numpy as np
import pytest

from scripts.replay_trace import Replay, replay

TRACE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "trm_train_trace"


@pytest.mark.timeout(600)
def test_official_trajectory_is_followed_for_100_steps():
    results = replay(TRACE)
    assert len(results) == 100 and not results[-1].failures, results[-1].failures
    # The only tolerated departures are rounding-decided sign-SGD signs, each named.
    notes = [n for r in results for n in r.notes]
    assert all(n.startswith("sign-SGD weight") for n in notes), notes


@pytest.mark.timeout(300)
def test_a_wrong_weight_is_caught_at_the_next_step():
    r = Replay(TRACE)
    assert not r.step(1).failures
    bumped = jax.tree.map(lambda x: x, r.state.params)
    bumped["lm_head"]["kernel"] = bumped["lm_head"]["kernel"] * (1 + 1e-3)
    r.state = r.state.replace(params=bumped)
    failures = r.step(2).failures
    assert any("lm_head.weight" in f for f in failures), failures


@pytest.mark.timeout(300)
def test_a_sign_sgd_flip_that_rounding_cannot_explain_is_not_resynced():
    r = Replay(TRACE)
    assert not r.step(1).failures
    # Reverse the whole puzzle-embedding update of step 2 after the fact: no single near-zero
    # gradient component explains it, so the replay must report it.
    probe = jax.device_get(r.probe(r.state, r.carry, r.batch(2)))
    r.state, r.carry, metrics = r.train_step(r.state, r.carry, r.batch(2), np.float32(0.0))
    lr = float(r.arrays["step/2/puzzle_emb_lr"])
    r.state = r.state.replace(puzzle_emb=r.state.puzzle_emb + 2 * lr * np.sign(probe["G"]))
    assert r.resync_sign_flip(2, probe) == []
    res = r.compare(2, jax.device_get(metrics), jax.device_get(r.carry), probe)
    assert any("puzzle_emb.weights" in f for f in res.failures), res.failures
