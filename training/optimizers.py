"""Optimizers: AdamATan2 (hand-written), AdamW and Lion (optax), the official lr schedule, and
the sign-SGD rule of the sparse puzzle embedding."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from training.config import PretrainConfig


def cosine_lr(step, base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float):
    """Official cosine_schedule_with_warmup_lr_lambda (num_cycles 0.5), not clamped after
    total_steps. The official loop increments its step before calling it: the first update
    uses step 1."""
    step = jnp.asarray(step, jnp.float32)
    warm = base_lr * step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    decay = base_lr * (min_ratio + jnp.maximum(0.0, (1 - min_ratio) * 0.5 * (1.0 + jnp.cos(math.pi * progress))))
    return jnp.where(step < warmup_steps, warm, decay)


class ScaleByAdamATan2State(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any


def adam_atan2(learning_rate, b1: float, b2: float, weight_decay: float) -> optax.GradientTransformation:
    """AdamATan2 as in the `adam-atan2` 0.0.3 package that official TRM imports.

    No maintained JAX library provides this rule (optax has no atan2 variant), so it is written
    here. Per step t (counted from 1): p <- p (1 - lr wd); m, v Adam moments;
    p <- p - lr / (1 - b1^t) * atan2(m, sqrt(v) / sqrt(1 - b2^t)). Bias correction 1 is outside
    the atan2, and there is no epsilon: atan2(0, 0) = 0.
    """

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return ScaleByAdamATan2State(jnp.zeros([], jnp.int32), zeros, jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params):
        t = state.count + 1
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        mu = jax.tree.map(lambda m, g: m + (1 - b1) * (g - m), state.mu, grads)
        nu = jax.tree.map(lambda v, g: v + (1 - b2) * (g * g - v), state.nu, grads)
        tf = t.astype(jnp.float32)
        step_size = lr / (1 - b1**tf)
        bc2_sqrt = jnp.sqrt(1 - b2**tf)

        def upd(p, m, v):
            decayed = p * (1 - lr * weight_decay)
            new_p = decayed - step_size * jnp.arctan2(m, jnp.sqrt(v) / bc2_sqrt)
            return (new_p - p).astype(p.dtype)

        return jax.tree.map(upd, params, mu, nu), ScaleByAdamATan2State(t, mu, nu)

    return optax.GradientTransformation(init, update)


def make_schedule(base_lr: float, cfg: PretrainConfig, total_steps: int):
    """optax counts from 0; the official first update uses step 1."""
    return lambda count: cosine_lr(count + 1, base_lr, cfg.lr_warmup_steps, total_steps, cfg.lr_min_ratio)


def build_optimizer(cfg: PretrainConfig, total_steps: int) -> optax.GradientTransformation:
    if cfg.freeze_weights:
        return optax.set_to_zero()
    lr = make_schedule(cfg.lr, cfg, total_steps)
    if cfg.optimizer == "adam_atan2":
        return adam_atan2(lr, cfg.beta1, cfg.beta2, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return optax.adamw(lr, b1=cfg.beta1, b2=cfg.beta2, eps=1e-8, weight_decay=cfg.weight_decay)
    return optax.lion(lr, b1=cfg.beta1, b2=cfg.beta2, weight_decay=cfg.weight_decay)


def sign_sgd_sparse_update(
    table_NxE: jax.Array, ids_B: jax.Array, grads_BxE: jax.Array, lr, weight_decay: float
) -> jax.Array:
    """The official sparse-embedding SignSGD: sum the gradient rows per unique id, then for each
    id present w <- w (1 - lr wd) - lr sign(G). Absent rows are untouched (not even decayed)."""
    B = ids_B.shape[0]
    N = table_NxE.shape[0]
    uniq, inverse = jnp.unique(ids_B, size=B, fill_value=N, return_inverse=True)
    G = jax.ops.segment_sum(grads_BxE.astype(jnp.float32), inverse.reshape(-1), num_segments=B)
    rows = jnp.take(table_NxE, uniq, axis=0, mode="clip")
    new_rows = rows * (1 - lr * weight_decay) - lr * jnp.sign(G)
    # Fill entries carry the out-of-range id N and are dropped by the scatter.
    return table_NxE.at[uniq].set(new_rows.astype(table_NxE.dtype), mode="drop")
