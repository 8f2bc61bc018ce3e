"""The explicit training state: everything a step reads and writes, and a checkpoint holds."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from models.act import Carry, initial_carry
from models.trm import TRMInner, init_variables
from training.config import PretrainConfig
from training.sharding import Shardings


def all_finite(tree) -> jax.Array:
    """Whether every floating-point leaf of `tree` is finite (integer leaves always are)."""
    floats = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in floats]))


@struct.dataclass
class TrainState:
    step: jax.Array  # optimizer steps taken (int32)
    params: Any  # float32, optimised by `tx`
    buffers: Any  # H_init / L_init, never trained
    opt_state: Any
    puzzle_emb: jax.Array  # [num_puzzle_identifiers, puzzle_emb_ndim], sign-SGD
    ema_params: Any  # EMA of params at ema_rate ({} when EMA is off): the primary weights when EMA is on
    ema_shadows: Any  # rate label (f"{rate:g}") -> EMA of params, one per extra rate of ema_rates ({} without)
    rng: jax.Array  # raw uint32 key: checkpoints store it as plain data
    loss_scale: jax.Array  # float16 dynamic loss scale (1.0 otherwise)
    good_steps: jax.Array  # finite steps since the loss scale last changed

    def eval_variables(self, use_ema: bool) -> dict[str, Any]:
        """Weights used for evaluation and exported checkpoints: EMA when enabled (the
        official EMA covers parameters only; buffers and the puzzle table are current)."""
        return {"params": self.ema_params if use_ema else self.params, "buffers": self.buffers}

    def restart_ema(self) -> TrainState:
        """Every EMA the state keeps, restarted from the current parameters (new weights loaded)."""
        fresh = lambda: jax.tree.map(jnp.copy, self.params)
        return self.replace(
            ema_params=fresh() if self.ema_params else {}, ema_shadows={k: fresh() for k in self.ema_shadows}
        )


def shadow_rates(cfg: PretrainConfig) -> dict[str, float]:
    """The EMA rates kept besides the primary one, by label (`eval_ema<label>/...` metrics): every
    rate of `ema_rates` except `ema_rate` itself when EMA is on (that one is `ema_params`)."""
    return {f"{r:g}": r for r in cfg.ema_rates if not (cfg.ema and r == cfg.ema_rate)}


def create_train_state(
    cfg: PretrainConfig, model: TRMInner, tx: optax.GradientTransformation, num_puzzle_ids: int
) -> TrainState:
    init_key, state_key = jax.random.split(jax.random.PRNGKey(cfg.seed))
    variables = init_variables(model, init_key)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros([], jnp.int32),
        params=params,
        buffers=variables["buffers"],
        opt_state=tx.init(params),
        # The official table is zero-initialised.
        puzzle_emb=jnp.zeros((num_puzzle_ids, cfg.arch.puzzle_emb_ndim), jnp.float32),
        ema_params=jax.tree.map(jnp.copy, params) if cfg.ema else {},
        ema_shadows={label: jax.tree.map(jnp.copy, params) for label in shadow_rates(cfg)},
        rng=state_key,
        loss_scale=jnp.asarray(cfg.loss_scale_init if cfg.arch.forward_dtype == "float16" else 1.0, jnp.float32),
        good_steps=jnp.zeros([], jnp.int32),
    )


def init_state_and_carry(
    cfg: PretrainConfig, model: TRMInner, tx: optax.GradientTransformation, *, num_puzzle_ids: int, sh: Shardings
) -> tuple[TrainState, Carry]:
    """The initial state (replicated) and ACT carry (rows over `data`), created on the devices
    in their final layout: nothing of full size is built on one host first."""
    state = jax.jit(lambda: create_train_state(cfg, model, tx, num_puzzle_ids), out_shardings=sh.replicated)()
    carry = jax.jit(lambda: initial_carry(model, cfg.global_batch_size), out_shardings=sh.batch)()
    return state, carry
