"""training/state.py: which EMA shadows a config keeps, and restarting every EMA from new weights."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from models.trm import ModelDims, build_model
from tests.pretrain_runs import assert_trees_equal
from training.config import compose, validate
from training.optimizers import build_optimizer
from training.state import create_train_state, shadow_rates

SMALL = ["arch.hidden_size=32", "arch.num_heads=2", "ema_rates=[0.9,0.99]"]


def _cfg(*overrides):
    return validate(compose("quickstart", [*SMALL, *overrides]))


@pytest.mark.parametrize(
    "overrides,want",
    [
        (["ema=true", "ema_rate=0.9"], {"0.99": 0.99}),  # the primary rate lives in ema_params only
        (["ema=false", "ema_rate=0.9"], {"0.9": 0.9, "0.99": 0.99}),
        (["ema=true", "ema_rate=0.5"], {"0.9": 0.9, "0.99": 0.99}),
        (["ema=true", "ema_rates=[]"], {}),
    ],
)
def test_shadow_rates(overrides, want):
    assert shadow_rates(_cfg(*overrides)) == want


@pytest.mark.parametrize("ema", [True, False])
def test_every_ema_starts_at_the_parameters_and_restarts_from_new_ones(ema):
    cfg = _cfg(f"ema={str(ema).lower()}", "ema_rate=0.9")
    model = build_model(cfg.arch, ModelDims(vocab_size=6, seq_len=16, num_puzzle_identifiers=3))
    state = create_train_state(cfg, model, build_optimizer(cfg, 10), 3)
    emas = [state.ema_params] if ema else []
    assert (state.ema_params == {}) is not ema and sorted(state.ema_shadows) == (["0.99"] if ema else ["0.9", "0.99"])
    for tree in [*emas, *state.ema_shadows.values()]:
        assert_trees_equal(jax.device_get(tree), jax.device_get(state.params))

    loaded = state.replace(params=jax.tree.map(lambda p: p + 1.0, state.params)).restart_ema()
    assert (loaded.ema_params == {}) is not ema and loaded.ema_shadows.keys() == state.ema_shadows.keys()
    for tree in [*([loaded.ema_params] if ema else []), *loaded.ema_shadows.values()]:
        assert_trees_equal(jax.device_get(tree), jax.device_get(loaded.params))
    assert not np.array_equal(jax.tree.leaves(loaded.params)[0], jax.tree.leaves(state.params)[0])
