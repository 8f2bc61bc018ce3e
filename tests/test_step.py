"""The jitted train step: data parallelism over 8 fake CPU devices matches 1 device, and a
non-finite update is skipped without touching the state."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.trm import ModelDims
from pretrain_jax import setup_model
from training.config import compose, validate
from training.sharding import global_batch, make_shardings
from training.step import make_eval_step

OVERRIDES = [
    "arch.hidden_size=32",
    "arch.num_heads=2",
    "arch.puzzle_emb_len=1",
    "global_batch_size=16",
    "arch.halt_exploration_prob=0.5",
]


def _setup(devices, overrides=()):
    cfg = validate(compose("quickstart", OVERRIDES + list(overrides)))
    sh = make_shardings(devices=devices)
    m = setup_model(cfg, ModelDims(vocab_size=6, seq_len=16, num_puzzle_identifiers=3), total_steps=100, sh=sh)
    return cfg, m.model, sh, m.state, m.carry, m.steps.train(cfg.arch.H_cycles, cfg.arch.L_cycles)


def _batches(n, B=16):
    rng = np.random.default_rng(0)
    for _ in range(n):
        yield {
            "inputs": rng.integers(1, 6, (B, 16)).astype(np.int32),
            "labels": np.where(rng.random((B, 16)) < 0.2, -100, rng.integers(1, 6, (B, 16))).astype(np.int32),
            "puzzle_identifiers": rng.integers(0, 3, (B,)).astype(np.int32),
        }


def run_steps(devices, overrides=(), n=3):
    cfg, model, sh, state, carry, step = _setup(devices, overrides)
    losses = []
    for b in _batches(n):
        state, carry, m = step(state, carry, global_batch(b, sh), np.float32(cfg.arch.halt_exploration_prob))
        losses.append(float(m["lm_loss"]))
    return losses, jax.device_get(state)


def compare_devices():
    assert jax.device_count() == 8
    one, state1 = run_steps(jax.devices()[:1])
    eight, state8 = run_steps(jax.devices())
    np.testing.assert_allclose(one, eight, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state1), jax.tree.leaves(state8), strict=False):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-5, atol=1e-6)
    print("MATCH", one)


@pytest.mark.timeout(300)
def test_eight_fake_devices_match_one():
    flags = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), "--xla_force_host_platform_device_count=8"]))
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "MATCH" in out.stdout, out.stdout[-2000:] + out.stderr[-4000:]


@pytest.mark.timeout(300)
def test_grad_accumulation_matches_one_big_batch():
    plain, s1 = run_steps(None, n=2)
    accum, s2 = run_steps(None, ["grad_accum_steps=4"], n=2)
    np.testing.assert_allclose(plain, accum, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params), strict=False):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.timeout(300)
def test_nonfinite_update_is_skipped():
    cfg, model, sh, state, carry, step = _setup(None, ["nonfinite_loss=skip"])
    before = jax.device_get(state)
    poisoned = state.replace(
        params=jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan) if x.ndim == 2 else x, state.params)
    )
    new_state, new_carry, m = step(poisoned, carry, global_batch(next(_batches(1)), sh), np.float32(0.0))
    assert bool(m["skipped"]) and not bool(m["loss_finite"])
    assert int(new_state.step) == 1
    np.testing.assert_array_equal(new_state.puzzle_emb, before.puzzle_emb)
    assert bool(jnp.all(new_carry.halted))  # non-finite latents are discarded


@pytest.mark.timeout(300)
def test_eval_runs_all_act_steps():
    cfg, model, sh, state, carry, _ = _setup(None)
    ev = make_eval_step(cfg=cfg, model=model, sh=sh, H_cycles=cfg.arch.H_cycles, L_cycles=cfg.arch.L_cycles)
    metrics, outputs = ev(state.eval_variables(False), state.puzzle_emb, global_batch(next(_batches(1)), sh))
    # Every labelled row halts exactly at halt_max_steps in evaluation.
    assert float(metrics["steps"]) == cfg.arch.halt_max_steps * float(metrics["count"])
    assert int(np.asarray(metrics["halt_step_hist"]).sum()) == 16
    assert outputs["preds"].shape == (16, 16) and outputs["q_halt_logits"].shape == (16,)


if __name__ == "__main__":
    compare_devices()


@pytest.mark.timeout(300)
def test_float16_dynamic_loss_scale_backs_off_on_overflow():
    # MLP-T: XLA's CPU backend has no float16 attention (float32-accumulating f16 dot).
    cfg, model, sh, state, carry, step = _setup(
        None, ["arch.forward_dtype=float16", "loss_scale_init=1e38", "arch.mlp_t=true", "arch.pos_encodings=none"]
    )
    batches = _batches(2)
    state, carry, m = step(state, carry, global_batch(next(batches), sh), np.float32(0.0))
    # The scaled loss overflows float32 gradients: the step is skipped and the scale halves,
    # but the loss itself is finite, so this is not an error.
    assert bool(m["loss_finite"]) and bool(m["skipped"])
    assert float(m["loss_scale"]) == pytest.approx(5e37, rel=1e-6)
    assert state.params["lm_head"]["kernel"].dtype == jnp.float32


@pytest.mark.timeout(300)
def test_bfloat16_step_keeps_float32_parameters():
    losses, state = run_steps(None, ["arch.forward_dtype=bfloat16"], n=2)
    assert all(np.isfinite(losses))
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.params))
    assert state.buffers["H_init"].dtype == jnp.bfloat16
