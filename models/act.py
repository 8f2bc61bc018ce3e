"""Adaptive computation time (ACT) with deep supervision, official semantics.

The carry persists across optimizer steps: every step each row runs one more ACT step on its
*current* puzzle; rows that halted on the previous step are reset to H_init/L_init and load the
new batch's row at the same index, while the other rows ignore the new batch.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from models.trm import TRMInner, inner_forward


@struct.dataclass
class Carry:
    z_H: jax.Array  # [B, P+L, D], compute dtype
    z_L: jax.Array  # [B, P+L, D]
    steps: jax.Array  # [B] int32, ACT steps taken on the current puzzle
    halted: jax.Array  # [B] bool; halted rows load new data on the next step
    inputs: jax.Array  # [B, L] int32, the current data
    labels: jax.Array  # [B, L] int32
    puzzle_identifiers: jax.Array  # [B] int32


def initial_carry(model: TRMInner, batch_size: int) -> Carry:
    """Every row halted, so the first step loads the batch."""
    S, L, D = model.total_len, model.dims.seq_len, model.arch.hidden_size
    # Two distinct buffers: the train step donates the carry.
    return Carry(
        z_H=jnp.zeros((batch_size, S, D), model.dtype),
        z_L=jnp.zeros((batch_size, S, D), model.dtype),
        steps=jnp.zeros((batch_size,), jnp.int32),
        halted=jnp.ones((batch_size,), bool),
        inputs=jnp.zeros((batch_size, L), jnp.int32),
        labels=jnp.zeros((batch_size, L), jnp.int32),
        puzzle_identifiers=jnp.zeros((batch_size,), jnp.int32),
    )


def reset_carry(carry: Carry, batch: dict[str, jax.Array], buffers: dict[str, jax.Array]) -> Carry:
    """Step 1 of an ACT step: halted rows restart from H_init/L_init on the new batch's row."""
    h = carry.halted

    def pick(new, old):
        # `new` is a batch row per row, or one [D] buffer broadcast explicitly to every row.
        new = jnp.broadcast_to(new, old.shape)
        return jnp.where(h.reshape((-1,) + (1,) * (old.ndim - 1)), new, old)

    return Carry(
        z_H=pick(buffers["H_init"], carry.z_H),
        z_L=pick(buffers["L_init"], carry.z_L),
        steps=jnp.where(h, 0, carry.steps),
        halted=h,
        inputs=pick(batch["inputs"], carry.inputs),
        labels=pick(batch["labels"], carry.labels),
        puzzle_identifiers=pick(batch["puzzle_identifiers"], carry.puzzle_identifiers),
    )


def exploration_min_steps(rng: jax.Array, batch_size: int, prob: Any, halt_max_steps: int) -> jax.Array:
    """Per row: with probability `prob` a minimum halting step uniform in [2, halt_max_steps],
    else 0 (no minimum). Drawn for the whole global batch at once so that gradient
    accumulation sees the same draws as one big batch."""
    k_explore, k_steps = jax.random.split(rng)
    explore = jax.random.uniform(k_explore, (batch_size,)) < prob
    return explore * jax.random.randint(k_steps, (batch_size,), 2, halt_max_steps + 1)


def act_step(
    model: TRMInner,
    variables,
    carry: Carry,
    puzzle_rows,
    *,
    train: bool,
    min_halt_steps: jax.Array | None,
    H_cycles: int,
    L_cycles: int,
) -> tuple[Carry, dict[str, jax.Array]]:
    """Steps 2-4 of an ACT step on an already reset carry.

    `puzzle_rows` [B, ndim] are the puzzle-embedding rows of the carry's current puzzles; they
    are an argument so the caller can differentiate with respect to exactly those rows.
    `min_halt_steps` [B] comes from `exploration_min_steps` (training only).
    """
    arch = model.arch
    emb = model.apply(variables, carry.inputs, puzzle_rows, method=TRMInner.embed)
    z_H, z_L = inner_forward(model, variables, carry.z_H, carry.z_L, emb, H_cycles=H_cycles, L_cycles=L_cycles)
    logits, q_halt, q_continue = model.apply(variables, z_H, method=TRMInner.heads)
    outputs = {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_continue}

    steps = carry.steps + 1
    is_last = steps >= arch.halt_max_steps
    halted = is_last
    # Evaluation always runs halt_max_steps so that a batch halts together.
    if train and arch.halt_max_steps > 1:
        q_halt_sg, q_cont_sg = jax.lax.stop_gradient((q_halt, q_continue))
        halted = halted | ((q_halt_sg > 0) if arch.no_ACT_continue else (q_halt_sg > q_cont_sg))
        halted = halted & (steps >= min_halt_steps)
        if not arch.no_ACT_continue:
            # Bootstrap target from one more inner pass on the new state (no replay buffer or
            # target network, as in the official code).
            z = jax.lax.stop_gradient((z_H, z_L))
            nz_H, _ = inner_forward(model, variables, *z, emb, H_cycles=H_cycles, L_cycles=L_cycles)
            _, nq_halt, nq_cont = model.apply(variables, nz_H, method=TRMInner.heads)
            target = jnp.where(is_last, nq_halt, jnp.maximum(nq_halt, nq_cont))
            outputs["target_q_continue"] = jax.lax.stop_gradient(jax.nn.sigmoid(target))

    new_carry = carry.replace(
        z_H=jax.lax.stop_gradient(z_H),
        z_L=jax.lax.stop_gradient(z_L),
        steps=steps,
        halted=halted,
    )
    return new_carry, outputs
