"""The jitted training and evaluation steps.

`train_step(state, carry, batch, exploration_prob) -> (state, carry, metrics)`: one ACT step
on every row of the global batch with deep supervision, the optimizer update of the weights,
the sign-SGD update of the puzzle-embedding rows present in the batch, EMA (the primary one and
every extra `ema_rates` shadow), and (float16) the dynamic loss scale. Metrics are device
scalars (sums); the host divides them.

`eval_step(variables, puzzle_emb, batch) -> (metrics, outputs)`: every row through all
`halt_max_steps` ACT steps inside one program.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from models.act import Carry, act_step, exploration_min_steps, initial_carry, reset_carry
from models.losses import act_loss, answer_quality
from models.trm import TRMInner
from training.config import PretrainConfig
from training.optimizers import make_schedule, sign_sgd_sparse_update
from training.sharding import Shardings
from training.state import TrainState, all_finite, shadow_rates


def _ema(rate: float, ema, params):
    return jax.tree.map(lambda e, p: rate * e + (1 - rate) * p, ema, params)


def _halt_histogram(steps_B, counted_B, n: int) -> jax.Array:
    """How many counted rows halted at step 1..n."""
    return jnp.bincount(jnp.where(counted_B, steps_B, 0), length=n + 1)[1:]


def _loss_and_grads(model: TRMInner, cfg: PretrainConfig, H_cycles: int, L_cycles: int):
    arch = cfg.arch

    def loss_fn(params, rows, buffers, carry, min_halt, scale):
        variables = {"params": params, "buffers": buffers}
        new_carry, out = act_step(
            model, variables, carry, rows, train=True, min_halt_steps=min_halt, H_cycles=H_cycles, L_cycles=L_cycles
        )
        loss, metrics, _ = act_loss(out, new_carry, loss_type=arch.loss_type)
        # The official loop backpropagates loss / global_batch_size.
        return loss * (scale / cfg.global_batch_size), (new_carry, metrics)

    grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)

    def run(params, rows, buffers, carry, min_halt, scale):
        (_, (new_carry, metrics)), (g, g_rows) = grad_fn(params, rows, buffers, carry, min_halt, scale)
        return g, g_rows, new_carry, metrics

    return run


def _accumulate(run, *, params, rows, buffers, carry, min_halt, scale, accum: int, sh: Shardings):
    """Gradient accumulation over `accum` micro-batches. Micro-batch a takes rows a, a+accum,
    ... so that every device keeps an equal share of every micro-batch."""
    if accum == 1:
        return run(params, rows, buffers, carry, min_halt, scale)
    B = rows.shape[0]

    def split(x):
        x = x.reshape(B // accum, accum, *x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(x, sh.micro_batch)

    def merge(x):
        return jax.lax.with_sharding_constraint(x.swapaxes(0, 1).reshape(B, *x.shape[2:]), sh.batch)

    def body(g_sum, xs):
        g, g_rows, new_carry, metrics = run(params, *xs[:1], buffers, *xs[1:], scale)
        return jax.tree.map(jnp.add, g_sum, g), (g_rows, new_carry, metrics)

    zeros = jax.tree.map(jnp.zeros_like, params)
    g, (g_rows, new_carry, metrics) = jax.lax.scan(body, zeros, jax.tree.map(split, (rows, carry, min_halt)))
    return g, merge(g_rows), jax.tree.map(merge, new_carry), jax.tree.map(lambda m: m.sum(0), metrics)


def make_train_step(
    *,
    cfg: PretrainConfig,
    model: TRMInner,
    tx: optax.GradientTransformation,
    total_steps: int,
    sh: Shardings,
    H_cycles: int,
    L_cycles: int,
    state_sharding,
    carry_sharding,
) -> Callable:
    arch = cfg.arch
    lr_fn = make_schedule(cfg.lr, cfg, total_steps)
    puzzle_lr_fn = make_schedule(cfg.puzzle_emb_lr, cfg, total_steps)
    run = _loss_and_grads(model, cfg, H_cycles, L_cycles)
    dynamic_scale = arch.forward_dtype == "float16"
    shadows = shadow_rates(cfg)

    def train_step(state: TrainState, carry: Carry, batch: dict[str, jax.Array], exploration_prob):
        rng, explore_rng = jax.random.split(state.rng)
        # Rows that halted on the previous step load new data now; the rest keep their puzzle.
        new_rows = carry.halted.sum()
        carry = reset_carry(carry, batch, state.buffers)
        ids = carry.puzzle_identifiers
        rows = jnp.take(state.puzzle_emb, ids, axis=0)
        min_halt = exploration_min_steps(explore_rng, ids.shape[0], exploration_prob, arch.halt_max_steps)
        g, g_rows, new_carry, metrics = _accumulate(
            run,
            params=state.params,
            rows=rows,
            buffers=state.buffers,
            carry=carry,
            min_halt=min_halt,
            scale=state.loss_scale,
            accum=cfg.grad_accum_steps,
            sh=sh,
        )
        g, g_rows = jax.tree.map(lambda x: x / state.loss_scale, (g, g_rows))

        loss_finite = jnp.isfinite(metrics["lm_loss"]) & jnp.isfinite(metrics["q_halt_loss"])
        updates, opt_state = tx.update(g, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        puzzle_emb = sign_sgd_sparse_update(
            state.puzzle_emb, ids, g_rows, puzzle_lr_fn(state.step), cfg.puzzle_emb_weight_decay
        )
        finite_step = loss_finite & all_finite((g, g_rows))
        # A finite step whose update overflows the weights (a huge lr) is dropped too: weights
        # that became inf could never be recovered, and a checkpoint of them would be poison.
        weights_overflow = finite_step & ~all_finite((params, puzzle_emb, opt_state))
        ok = finite_step & ~weights_overflow
        ema = _ema(cfg.ema_rate, state.ema_params, params) if cfg.ema else {}
        ema_shadows = {label: _ema(rate, state.ema_shadows[label], params) for label, rate in shadows.items()}

        def keep_if_ok(new, old):
            return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)

        params, opt_state, puzzle_emb, ema, ema_shadows = keep_if_ok(
            (params, opt_state, puzzle_emb, ema, ema_shadows),
            (state.params, state.opt_state, state.puzzle_emb, state.ema_params, state.ema_shadows),
        )
        # A skipped step must not leave non-finite latents behind: those rows restart.
        new_carry = new_carry.replace(halted=new_carry.halted | ~ok)

        loss_scale, good_steps = state.loss_scale, state.good_steps + 1
        if dynamic_scale:
            grow = ok & (good_steps >= cfg.loss_scale_growth_interval)
            loss_scale = jnp.where(ok, jnp.where(grow, loss_scale * 2, loss_scale), jnp.maximum(loss_scale / 2, 1.0))
            good_steps = jnp.where(ok & ~grow, good_steps, 0)

        metrics = dict(
            metrics,
            lr=lr_fn(state.step),
            loss_finite=loss_finite,
            params_finite=all_finite(state.params),
            weights_overflow=weights_overflow,
            skipped=~ok,
            loss_scale=loss_scale,
            new_rows=new_rows,
            halt_step_hist=_halt_histogram(new_carry.steps, new_carry.halted, arch.halt_max_steps),
        )
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            puzzle_emb=puzzle_emb,
            ema_params=ema,
            ema_shadows=ema_shadows,
            rng=rng,
            loss_scale=loss_scale,
            good_steps=good_steps,
        )
        return new_state, new_carry, metrics

    return jax.jit(train_step, donate_argnums=(0, 1), out_shardings=(state_sharding, carry_sharding, sh.replicated))


def make_eval_step(*, cfg: PretrainConfig, model: TRMInner, sh: Shardings, H_cycles: int, L_cycles: int) -> Callable:
    arch = cfg.arch
    n = arch.halt_max_steps

    def one_step(variables, puzzle_emb, carry, batch):
        carry = reset_carry(carry, batch, variables["buffers"])
        rows = jnp.take(puzzle_emb, carry.puzzle_identifiers, axis=0)
        return act_step(
            model, variables, carry, rows, train=False, min_halt_steps=None, H_cycles=H_cycles, L_cycles=L_cycles
        )

    def eval_step(variables: dict[str, Any], puzzle_emb: jax.Array, batch: dict[str, jax.Array]):
        B = batch["inputs"].shape[0]
        carry = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sh.batch), initial_carry(model, B))

        def body(c, _):
            carry, first_halt_B, adaptive, _ = c
            carry, out = one_step(variables, puzzle_emb, carry, batch)
            _, metrics, preds = act_loss(out, carry, loss_type=arch.loss_type)
            quality = answer_quality(preds, carry.labels)
            counted = quality["labelled"]
            would_halt_B = out["q_halt_logits"] > 0
            # The adaptive answer: the prediction at the first step whose Q head says halt (the
            # step training would have stopped at), else at halt_max_steps.
            first_B = (first_halt_B == 0) & (would_halt_B | (carry.steps >= n))
            first_halt_B = jnp.where(first_B, carry.steps, first_halt_B)
            adaptive = jax.tree.map(lambda new, old: jnp.where(first_B, new, old), quality, adaptive)
            per_step = {
                "accuracy": jnp.sum(jnp.where(counted, quality["accuracy"], 0.0)),
                "exact_accuracy": (counted & quality["exact"]).sum(),
                "q_halt_accuracy": (counted & ((out["q_halt_logits"] >= 0) == quality["exact"])).sum(),
                "halt_fraction": (counted & would_halt_B).sum(),
            }
            return (carry, first_halt_B, adaptive, (preds, out["q_halt_logits"])), (metrics, per_step)

        no_answer = {"accuracy": jnp.zeros(B), "exact": jnp.zeros(B, bool), "labelled": jnp.zeros(B, bool)}
        last = (jnp.zeros_like(carry.labels), jnp.zeros(B, jnp.float32))
        init = (carry, jnp.zeros_like(carry.steps), no_answer, last)
        (carry, first_halt_B, adaptive, (preds, q_halt)), (metrics, per_step) = jax.lax.scan(body, init, length=n)
        # Evaluation runs every row through all halt_max_steps: the official metrics are the last step's.
        metrics = jax.tree.map(lambda x: x[-1], metrics)
        counted = adaptive["labelled"]
        metrics.update({f"{k}_per_step": v for k, v in per_step.items()})
        metrics["adaptive_accuracy"] = jnp.sum(jnp.where(counted, adaptive["accuracy"], 0.0))
        metrics["adaptive_exact_accuracy"] = (counted & adaptive["exact"]).sum()
        metrics["adaptive_steps"] = jnp.sum(jnp.where(counted, first_halt_B, 0))
        metrics["halt_step_hist"] = _halt_histogram(first_halt_B, counted, n)
        return metrics, {"preds": preds, "q_halt_logits": q_halt, "halt_step": first_halt_B}

    return jax.jit(eval_step, out_shardings=(sh.replicated, sh.batch))


class CompiledSteps:
    """A run's jitted programs, one train and one eval step per recursion depth (H_cycles,
    L_cycles), each compiled on first use: the curriculum changes depth in whole cycles, so a run
    compiles at most a few."""

    def __init__(self, *, cfg: PretrainConfig, model: TRMInner, tx, total_steps: int, sh: Shardings, state, carry):
        self._common = dict(cfg=cfg, model=model, sh=sh)
        self._train_only = dict(
            tx=tx,
            total_steps=total_steps,
            state_sharding=jax.tree.map(lambda x: x.sharding, state),
            carry_sharding=jax.tree.map(lambda x: x.sharding, carry),
        )
        self._train: dict[tuple[int, int], Callable] = {}
        self._eval: dict[tuple[int, int], Callable] = {}

    def train(self, H_cycles: int, L_cycles: int) -> Callable:
        if (H_cycles, L_cycles) not in self._train:
            self._train[H_cycles, L_cycles] = make_train_step(
                **self._common, **self._train_only, H_cycles=H_cycles, L_cycles=L_cycles
            )
        return self._train[H_cycles, L_cycles]

    def eval(self, H_cycles: int, L_cycles: int) -> Callable:
        if (H_cycles, L_cycles) not in self._eval:
            self._eval[H_cycles, L_cycles] = make_eval_step(**self._common, H_cycles=H_cycles, L_cycles=L_cycles)
        return self._eval[H_cycles, L_cycles]
