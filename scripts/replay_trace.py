"""Replay the official training trajectory with our train step and find where we leave it.

    python scripts/replay_trace.py ../shared/fixtures/trm_train_trace [--steps 100]

The fixture (its README explains it) holds 100 optimizer steps of the official training loop on
the quick-start configuration, exploration off: the initial weights, every global batch, every
step's metrics, halted flags and learning rates, the norm of every parameter after every step and
full parameters at a few steps, and how far float32 drifts from float64 along the same path.
We load the initial weights, feed the same batches through our jitted `train_step` (our carry,
our optimizer state, chained from step 1) and after each step compare:
  - the integer metrics, `halted` and the carry's step counters exactly;
  - the learning rate, lm/q-halt loss and token accuracy, and every parameter norm, to
    10x the fixture's float32-vs-float64 drift at that step (at least rtol 1e-5);
  - the full parameters at the snapshot steps, to 10x that step's drift.
It stops at the first step that fails and names what moved, since every later step inherits the
difference. Exit code 0 only when all steps pass.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from models.act import act_step, reset_carry
from models.losses import IGNORE_LABEL_ID, act_loss
from models.torch_import import import_state_dict, official_name_to_path
from models.trm import ModelDims, init_variables
from pretrain_jax import setup_model
from training.config import PretrainConfig, compose, validate
from training.sharding import make_shardings

PUZZLE_EMB = "model.inner.puzzle_emb.weights"
EXACT_METRICS = ("count", "exact_accuracy", "q_halt_accuracy", "steps")
# Floors for the float tolerances: the fixture's drift is sometimes 0 (e.g. a loss that f32 and
# f64 round identically), while two float32 implementations still differ in the last bits.
REL_FLOOR = 1e-5
MARGIN = 10.0
# Argmax-based metrics are discontinuous: a token whose top-2 logits are closer than float32
# rounding of the logits can flip between two correct float32 implementations (seen at step 16:
# a gap of 1.4e-6). Such tokens may count differently; every other token must agree.
TIE_GAP = 1e-4
# Sign-SGD moves a puzzle-embedding weight by lr * sign(summed gradient). When the per-row
# gradients nearly cancel (sum below this fraction of their absolute sum), rounding decides the
# sign, and the two runs part by 2 lr in that weight (the fixture README's stated hazard; seen at
# step 68: a sum of 2e-7 over rows of up to 5e-4). The replay then takes the official sign, found
# from the official parameter norm, says so, and goes on.
SIGN_RISK = 1e-4


@dataclass
class StepResult:
    step: int
    failures: list[str] = field(default_factory=list)
    worst: dict[str, float] = field(default_factory=dict)  # quantity -> error / tolerance
    notes: list[str] = field(default_factory=list)  # rounding-decided outcomes that were re-synced


def trace_config(meta: dict) -> PretrainConfig:
    """Our config for the fixture's run, from its recorded official config."""
    c, a = meta["config"], meta["config"]["arch"]
    arch_keys = ("halt_exploration_prob", "halt_max_steps", "H_cycles", "L_cycles", "L_layers", "hidden_size")
    arch_keys += ("num_heads", "expansion", "puzzle_emb_ndim", "puzzle_emb_len", "pos_encodings", "forward_dtype")
    arch_keys += ("mlp_t", "no_ACT_continue", "rms_norm_eps", "rope_theta")
    overrides = [f"arch.{k}={a[k]}" for k in arch_keys] + [f"arch.loss_type={a['loss']['loss_type']}"]
    run_keys = ("global_batch_size", "epochs", "lr", "lr_min_ratio", "lr_warmup_steps", "weight_decay", "beta1")
    run_keys += ("beta2", "puzzle_emb_lr", "puzzle_emb_weight_decay", "seed", "eval_interval", "ema", "ema_rate")
    overrides += [f"{k}={c[k]}" for k in run_keys] + ["optimizer=adam_atan2", "grad_accum_steps=1"]
    return validate(compose("cfg_pretrain", overrides))


def _rounding_sensitive(model, loss_type: str, state, carry, batch) -> dict[str, jax.Array]:
    """This step's forward and puzzle-embedding backward again (exploration off), to see where
    float32 rounding may decide a discrete outcome: for the rows that halt, the share of token
    accuracy on near-tied logits and how many rows could flip exactness or the q-halt test; and
    the sign-SGD components whose summed gradient is within rounding of zero."""
    carry = reset_carry(carry, batch, state.buffers)
    ids = carry.puzzle_identifiers
    variables = {"params": state.params, "buffers": state.buffers}
    arch = model.arch

    def loss(rows):
        new, out = act_step(
            model,
            variables,
            carry,
            rows,
            train=True,
            min_halt_steps=jnp.zeros_like(carry.steps),
            H_cycles=arch.H_cycles,
            L_cycles=arch.L_cycles,
        )
        total, _, _ = act_loss(out, new, loss_type=loss_type)
        return total / ids.shape[0], (new, out)

    g_BxE, (new, out) = jax.grad(loss, has_aux=True)(jnp.take(state.puzzle_emb, ids, axis=0))
    top2 = jax.lax.top_k(out["logits"].astype(jnp.float32), 2)[0]
    mask = new.labels != IGNORE_LABEL_ID
    tie_BxL = mask & (top2[..., 0] - top2[..., 1] < TIE_GAP) & new.halted[:, None]
    q_tie_B = jnp.abs(out["q_halt_logits"]) < TIE_GAP
    G_NxE = jnp.zeros_like(state.puzzle_emb).at[ids].add(g_BxE)
    mass_NxE = jnp.zeros_like(state.puzzle_emb).at[ids].add(jnp.abs(g_BxE))
    return {
        "token_share": jnp.sum(tie_BxL / jnp.maximum(mask.sum(-1, keepdims=True), 1)),
        "rows": jnp.sum(new.halted & (tie_BxL.any(-1) | q_tie_B)),
        "G": G_NxE,
        "sign_at_risk": (mass_NxE > 0) & (jnp.abs(G_NxE) < SIGN_RISK * mass_NxE),
    }


def _flat_state_dict(params, buffers, puzzle_emb, names: list[str]) -> dict[str, np.ndarray]:
    """Our arrays under the official state_dict names, in the official layout."""
    flat = {"params": traverse_util.flatten_dict(params), "buffers": traverse_util.flatten_dict(buffers)}
    out = {}
    for name in names:
        coll, path, transpose = official_name_to_path(name)
        value = np.asarray(puzzle_emb if coll == "puzzle_emb" else flat[coll][path], np.float64)
        out[name] = value.T if transpose else value
    return out


class Replay:
    """Our model, optimizer, state and carry set up from the fixture's initial weights."""

    def __init__(self, trace_dir: Path):
        self.meta = json.loads((trace_dir / "trace.json").read_text())
        self.arrays = np.load(trace_dir / "trace.npz")
        self.cfg = trace_config(self.meta)
        mc = self.meta["model_config"]
        dims = ModelDims(mc["vocab_size"], mc["seq_len"], mc["num_puzzle_identifiers"])
        total_steps = self.meta["schedule"]["total_steps"]
        m = setup_model(self.cfg, dims, total_steps=total_steps, sh=make_shardings(devices=jax.devices()[:1]))
        initial = {k[len("param0/") :]: self.arrays[k] for k in self.arrays if k.startswith("param0/")}
        params, buffers, table = import_state_dict(initial, init_variables(m.model, jax.random.key(0)))
        put = lambda x, like: jax.device_put(np.asarray(x, like.dtype), like.sharding)  # noqa: E731
        self.state = m.state.replace(
            params=jax.tree.map(put, params, m.state.params),
            buffers=jax.tree.map(put, buffers, m.state.buffers),
            puzzle_emb=put(table, m.state.puzzle_emb),
        )
        self.carry = m.carry
        self.names = self.meta["state_dict_names"]
        self.train_step = m.steps.train(self.cfg.arch.H_cycles, self.cfg.arch.L_cycles)
        self.noise = {d["step"]: d for d in self.meta["float_noise"]["per_step"]}
        self.probe = jax.jit(partial(_rounding_sensitive, m.model, self.cfg.arch.loss_type))

    def batch(self, k: int) -> dict[str, np.ndarray]:
        return {f: self.arrays[f"batch/{k}/{f}"] for f in ("inputs", "labels", "puzzle_identifiers")}

    def step(self, k: int) -> StepResult:
        probe = jax.device_get(self.probe(self.state, self.carry, self.batch(k)))
        self.state, self.carry, metrics = self.train_step(self.state, self.carry, self.batch(k), np.float32(0.0))
        notes = self.resync_sign_flip(k, probe)
        metrics, carry = jax.device_get((metrics, self.carry))
        res = self.compare(k, metrics, carry, probe)
        res.notes = notes
        return res

    def resync_sign_flip(self, k: int, probe: dict) -> list[str]:
        """If the puzzle-embedding norm left the official one and reversing the update of exactly
        one at-risk weight brings it back, reverse it (see SIGN_RISK)."""
        table = np.asarray(self.state.puzzle_emb, np.float64)
        official = float(self.arrays[f"paramnorm/{k}/{PUZZLE_EMB}"])
        tol = REL_FLOOR * official
        if abs(np.linalg.norm(table) - official) <= tol:
            return []
        lr = float(self.arrays[f"step/{k}/puzzle_emb_lr"])
        for n, e in zip(*np.nonzero(probe["sign_at_risk"]), strict=True):
            flipped = table.copy()
            flipped[n, e] += 2 * lr * np.sign(probe["G"][n, e])
            if abs(np.linalg.norm(flipped) - official) <= tol:
                fixed = self.state.puzzle_emb.at[n, e].set(np.float32(flipped[n, e]))
                self.state = self.state.replace(puzzle_emb=fixed)
                mass = f"summed gradient {probe['G'][n, e]:.2e}"
                return [f"sign-SGD weight [{n}, {e}]: {mass} within rounding of 0; official sign taken"]
        return []

    def compare(self, k: int, metrics: dict, carry, ties: dict) -> StepResult:
        res = StepResult(k)
        a, noise = self.arrays, self.noise[k]

        def close(what: str, ours, ref, atol: float, rtol: float = REL_FLOOR) -> None:
            ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
            err = np.abs(ours - ref)
            limit = atol + rtol * np.abs(ref)
            res.worst[what] = float(np.max(np.where(err > 0, err / np.maximum(limit, 1e-300), 0.0)))
            if np.any(err > limit):
                i = int(np.argmax(err - limit))
                res.failures.append(
                    f"{what}: ours {ours.flat[i]:.9g} vs official {ref.flat[i]:.9g} (tol {limit.flat[i]:.2g})"
                )

        def exact(what: str, ours, ref) -> None:
            if not np.array_equal(np.asarray(ours), np.asarray(ref)):
                res.failures.append(f"{what}: ours {np.asarray(ours).tolist()} vs official {np.asarray(ref).tolist()}")

        for m in EXACT_METRICS:
            if m in ("exact_accuracy", "q_halt_accuracy"):  # may flip by one per row with a near-tie
                close(f"metric {m}", metrics[m], a[f"step/{k}/{m}"], atol=float(ties["rows"]) + 0.5, rtol=0.0)
            else:
                exact(f"metric {m}", metrics[m], a[f"step/{k}/{m}"])
        exact("halted", carry.halted, a[f"step/{k}/halted"])
        exact("carry steps", carry.steps, a[f"step/{k}/carry_steps"])
        drift = noise["metrics_abs_diff"]
        close("lr", metrics["lr"], a[f"step/{k}/lr"], atol=0.0, rtol=1e-6)
        for m in ("lm_loss", "q_halt_loss"):
            close(f"metric {m}", metrics[m], a[f"step/{k}/{m}"], atol=MARGIN * drift[m])
        tie_tokens = float(ties["token_share"])
        close(
            "metric accuracy",
            metrics["accuracy"],
            a[f"step/{k}/accuracy"],
            atol=MARGIN * drift["accuracy"] + tie_tokens,
        )
        ours = _flat_state_dict(self.state.params, self.state.buffers, self.state.puzzle_emb, self.names)
        norm_rtol = max(REL_FLOOR, MARGIN * noise["paramnorm_max_rel_diff"])
        for name in self.names:
            close(f"norm {name}", np.linalg.norm(ours[name]), a[f"paramnorm/{k}/{name}"], atol=0.0, rtol=norm_rtol)
        if f"param/{k}/{self.names[0]}" in a:
            for name in self.names:
                close(f"param {name}", ours[name], a[f"param/{k}/{name}"], atol=MARGIN * noise["param_max_abs_diff"])
        return res


def replay(trace_dir: Path, steps: int | None = None, *, verbose: bool = False) -> list[StepResult]:
    """Replays up to `steps` steps; the last result is the first failure, if any."""
    r = Replay(trace_dir)
    results = []
    for k in range(1, (steps or r.meta["K"]) + 1):
        res = r.step(k)
        results.append(res)
        if verbose:
            worst = max(res.worst, key=res.worst.get)
            print(f"step {k:3d} {'ok  ' if not res.failures else 'FAIL'} worst {worst} at {res.worst[worst]:.2f}x tol")
            for note in res.notes:
                print(f"         note: {note}")
        if res.failures:
            break
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trace_dir", type=Path)
    parser.add_argument("--steps", type=int, default=None, help="replay only the first N steps")
    args = parser.parse_args(argv)
    results = replay(args.trace_dir, args.steps, verbose=True)
    last = results[-1]
    if last.failures:
        print(f"\nleft the official trajectory at step {last.step}:")
        print("\n".join(f"  {f}" for f in last.failures))
        return 1
    print(f"\n{len(results)} steps replayed: every step within the official trajectory's float32 drift")
    return 0


if __name__ == "__main__":
    sys.exit(main())
