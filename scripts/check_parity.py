"""Compare this JAX TRM against fixtures recorded from the official PyTorch code.

    python scripts/check_parity.py ../shared/fixtures/trm_reference [MORE_DIRS ...]   # float32
    python scripts/check_parity.py ../shared/fixtures/trm_bf16                        # bfloat16

Every case (`<case>.json` + `<case>.npz`) of each directory is checked by its kind; a model trace
whose sidecar says forward_dtype is not float32 is a 16-bit trace. Exits 0 only if every check
passes and every array in the fixtures was compared. Prints the worst error per tensor.

float32 model traces: load the official weights by name, replay the training-mode and eval-mode
ACT steps, and compare logits, q-logits, carry, halting, loss, metrics and gradients, twice:
  chained        - our own carry chained through all steps, step 1 included;
  teacher-forced - every later step restarted from the saved previous carry.
Both use the per-array atol that the fixture's sidecar suggests (10x the float32-vs-float64
noise; the recursion amplifies float32 rounding) with rtol 1e-5, and 1e-5 where the sidecar
gives none; gradients are compared at rtol = atol = 1e-5. Discrete outputs (halting, step
counts, current data, integer metrics) must match exactly. The function/optimizer cases compare
stablemax, AdamATan2, the sparse sign-SGD and the lr schedule.

16-bit (bf16) model traces: step 1 and every teacher-forced step (the chained bf16 recursion is
chaotic), judged against the sidecar's `bf16_vs_fp32`, how far the official bf16 run is from the
official float32 run. A trace passes when
  (a) halting decisions, step counts and the data they select match exactly;
  (b) the argmax matches at every position the sidecar marks stable (top-1/top-2 gap of the
      official logits >= its threshold); argmax-derived metrics (accuracy, exact_accuracy,
      q_halt_accuracy, the q_halt loss target) must match after accounting for the flips at
      unstable positions;
  (c) every float array, gradients included, has max|ours - official| / bf16_vs_fp32 <= 1.5.
      Arrays of fewer than 16 values (q logits, losses) use the largest bf16_vs_fp32 of the same
      quantity over the mode's steps.
XLA's excess precision is turned off (unless --xla-excess-precision) so that the program rounds
every 16-bit operation where it says, as the official eager run does.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from models.act import Carry, act_step, exploration_min_steps, initial_carry, reset_carry
from models.config import ArchConfig
from models.losses import IGNORE_LABEL_ID, act_loss, log_stablemax, stablemax_cross_entropy
from models.torch_import import import_state_dict, official_name_to_path
from models.trm import ModelDims, build_model, init_variables
from training.optimizers import adam_atan2, cosine_lr, sign_sgd_sparse_update

TIGHT = dict(rtol=1e-5, atol=1e-5)
GRAD = dict(rtol=1e-5, atol=1e-5)
# The halting decisions, step counts and the data they select: exact in every mode.
SELECTION = (
    "halted",
    "steps",
    "all_finish",
    "current_inputs",
    "current_labels",
    "current_puzzle_identifiers",
)
DISCRETE = SELECTION + (
    "metric/count",
    "metric/exact_accuracy",
    "metric/q_halt_accuracy",
    "metric/steps",
    "local_ids",
)


@dataclass
class Result:
    key: str
    err: float
    tol: str
    ok: bool
    ratio: float | None = None  # bf16 traces: err / bf16_vs_fp32


class Comparator:
    def __init__(self, case: str, arrays):
        self.case, self.arrays, self.results, self.used = case, arrays, [], set()

    def mark_used(self, *keys):
        self.used.update(keys)

    def check(self, key: str, ours, label: str | None = None, rtol=1e-5, atol=1e-5):
        """Compare `ours` against fixture array `key`; `label` names the check in the report."""
        ref = np.asarray(self.arrays[key])
        ours = np.asarray(ours)
        self.used.add(key)
        name = f"{self.case}:{label or key}"
        if ours.shape != ref.shape:
            self.results.append(Result(name, float("inf"), f"shape {ours.shape} vs {ref.shape}", False))
            return
        if any(key.endswith(d) for d in DISCRETE) or ref.dtype == bool:
            bad = int(np.sum(ours.astype(np.int64) != ref.astype(np.int64)))
            self.results.append(Result(name, float(bad), "exact", bad == 0))
            return
        diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
        limit = atol + rtol * np.abs(ref.astype(np.float64))
        ok = bool(np.all(diff <= limit)) and bool(np.all(np.isfinite(ours) == np.isfinite(ref)))
        self.results.append(Result(name, float(diff.max()) if diff.size else 0.0, f"rtol={rtol:g} atol={atol:g}", ok))


# ---------------------------------------------------------------- model traces


def _arch_from_fixture(meta) -> ArchConfig:
    mc = meta["model_config"]
    loss = re.search(r"loss_type='(\w+)'", meta.get("loss_head", "")) if meta.get("loss_head") else None
    keys = (
        "halt_exploration_prob",
        "halt_max_steps",
        "H_cycles",
        "L_cycles",
        "H_layers",
        "L_layers",
        "hidden_size",
        "num_heads",
        "expansion",
        "puzzle_emb_ndim",
        "puzzle_emb_len",
        "pos_encodings",
        "forward_dtype",
        "mlp_t",
        "no_ACT_continue",
        "rms_norm_eps",
        "rope_theta",
    )
    return ArchConfig(
        name="trm",
        loss_type=loss.group(1) if loss else "stablemax_cross_entropy",
        unroll_cycles=False,
        attention_impl="xla",
        **{k: mc[k] for k in keys},
    )


def _batch(arrays, prefix):
    return {k: jnp.asarray(arrays[f"{prefix}/{k}"], jnp.int32) for k in ("inputs", "labels", "puzzle_identifiers")}


def _saved_carry(arrays, prefix, dtype=jnp.float32) -> Carry:
    """The carry a trace saved after step `prefix`; z in the compute dtype (bf16 traces store their
    bf16 carry as exact float32 values)."""
    return Carry(
        z_H=jnp.asarray(arrays[f"{prefix}/z_H"]).astype(dtype),
        z_L=jnp.asarray(arrays[f"{prefix}/z_L"]).astype(dtype),
        steps=jnp.asarray(arrays[f"{prefix}/steps"], jnp.int32),
        halted=jnp.asarray(arrays[f"{prefix}/halted"], bool),
        inputs=jnp.asarray(arrays[f"{prefix}/current_inputs"], jnp.int32),
        labels=jnp.asarray(arrays[f"{prefix}/current_labels"], jnp.int32),
        puzzle_identifiers=jnp.asarray(arrays[f"{prefix}/current_puzzle_identifiers"], jnp.int32),
    )


def _make_step(model, arch: ArchConfig):
    def step(variables, table, carry, batch, rng, train: bool):
        carry = reset_carry(carry, batch, variables["buffers"])
        rows = jnp.take(table, carry.puzzle_identifiers, axis=0)

        def loss_fn(params, rows):
            v = {"params": params, "buffers": variables["buffers"]}
            min_halt = exploration_min_steps(rng, rows.shape[0], arch.halt_exploration_prob, arch.halt_max_steps)
            new_carry, out = act_step(
                model,
                v,
                carry,
                rows,
                train=train,
                min_halt_steps=min_halt,
                H_cycles=arch.H_cycles,
                L_cycles=arch.L_cycles,
            )
            loss, metrics, _ = act_loss(out, new_carry, loss_type=arch.loss_type)
            return loss, (new_carry, out, metrics)

        if not train:
            loss, (new_carry, out, metrics) = loss_fn(variables["params"], rows)
            return new_carry, out, loss, metrics, None
        (loss, (new_carry, out, metrics)), grads = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
            variables["params"], rows
        )
        return new_carry, out, loss, metrics, grads

    return jax.jit(step, static_argnames="train")


def _compare_step(cmp: Comparator, prefix: str, label: str, carry, out, loss, metrics, tols):
    def tol(name):
        return tols(f"{prefix}/{name}")

    for name in ("logits", "q_halt_logits", "q_continue_logits"):
        cmp.check(f"{prefix}/{name}", out[name], f"{label}/{name}", **tol(name))
    for name in ("z_H", "z_L"):
        if f"{prefix}/{name}" in cmp.arrays:
            cmp.check(f"{prefix}/{name}", getattr(carry, name), f"{label}/{name}", **tol(name))
    cmp.check(f"{prefix}/halted", carry.halted, f"{label}/halted")
    cmp.check(f"{prefix}/steps", carry.steps, f"{label}/steps")
    cmp.check(f"{prefix}/all_finish", carry.halted.all(), f"{label}/all_finish")
    for name in ("inputs", "labels", "puzzle_identifiers"):
        cmp.check(f"{prefix}/current_{name}", getattr(carry, name), f"{label}/current_{name}")
    cmp.check(f"{prefix}/loss", loss, f"{label}/loss", **tol("loss"))
    for k, v in metrics.items():
        key = f"{prefix}/metric/{k}"
        if key in cmp.arrays:
            cmp.check(
                key, v, f"{label}/metric/{k}", **(dict(rtol=0, atol=1e-6) if k == "accuracy" else tol(f"metric/{k}"))
            )


def _load_trace(cmp: Comparator, meta, arrays):
    """(arch, model, variables, puzzle table, batches) of a model trace, official weights loaded by name."""
    arch = _arch_from_fixture(meta)
    mc = meta["model_config"]
    model = build_model(arch, ModelDims(mc["vocab_size"], mc["seq_len"], mc["num_puzzle_identifiers"]))
    state_dict = {k[len("param/") :]: arrays[k] for k in arrays if k.startswith("param/")}
    cmp.mark_used(*(f"param/{k}" for k in state_dict))
    # H_init / L_init load into buffers of the compute dtype (bf16 traces store their exact values).
    params, buffers, table = import_state_dict(state_dict, init_variables(model, jax.random.key(0)))
    variables = {"params": params, "buffers": buffers}
    table = jnp.asarray(
        table if table is not None else np.zeros((mc["num_puzzle_identifiers"], arch.puzzle_emb_ndim), np.float32)
    )
    batches = {
        "batch": _batch(arrays, "batch"),
        "batch2": _batch(arrays, "batch2") if "batch2/inputs" in arrays else None,
    }
    cmp.mark_used(*(k for k in arrays if k.startswith(("batch/", "batch2/"))))
    return arch, model, variables, table, batches


def check_model_trace(case: str, meta, arrays) -> Comparator:
    cmp = Comparator(case, arrays)
    arch, model, variables, table, batches = _load_trace(cmp, meta, arrays)
    step = _make_step(model, arch)
    noise = meta.get("float32_noise", {}).get("per_key", {})

    def sidecar(kind):
        # The sidecar's per-array atol (10x the measured float32-vs-float64 noise) at every step,
        # step 1 included: a fixed 1e-5 raises false alarms where rounding alone moves an array
        # by about that much. 1e-5 only where the sidecar gives none.
        def tol(key):
            return dict(rtol=TIGHT["rtol"], atol=noise.get(key, {}).get(f"suggested_atol_{kind}", TIGHT["atol"]))

        return tol

    rng = jax.random.key(int(meta.get("seed", 0)) if isinstance(meta.get("seed"), int) else 0)
    for mode, train in (("train", True), ("eval", False)):
        n = max(int(m.group(1)) for k in arrays if (m := re.match(rf"{mode}/(\d+)/logits$", k)))
        own = initial_carry(model, batches["batch"]["inputs"].shape[0])
        for k in range(1, n + 1):
            batch = batches["batch"] if (k == 1 or mode == "eval") else batches["batch2"]
            prefix = f"{mode}/{k}"
            rng, sub = jax.random.split(rng)
            own, out, loss, metrics, grads = step(variables, table, own, batch, sub, train=train)
            _compare_step(cmp, prefix, f"{prefix}[chained]", own, out, loss, metrics, sidecar("chained"))
            if k == 1 and mode == "train":
                _compare_grads(cmp, grads, own)
            if k > 1:
                forced, out, loss, metrics, _ = step(
                    variables, table, _saved_carry(arrays, f"{mode}/{k - 1}"), batch, sub, train=train
                )
                _compare_step(
                    cmp, prefix, f"{prefix}[teacher-forced]", forced, out, loss, metrics, sidecar("teacher_forced")
                )
    return cmp


def _our_grad(cmp: Comparator, key: str, grads):
    """Our gradient for the official `grad/<name>` (transposed to the official layout), or None
    after recording that we have no such parameter."""
    param_grads, row_grads = grads
    name = key[len("grad/") :]
    if name.endswith("local_weights"):
        return row_grads
    coll, path, transpose = official_name_to_path(name)
    flat = {tuple(p.key for p in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(param_grads)[0]}
    g = flat.get(path)
    if coll != "params" or g is None:
        cmp.results.append(Result(f"{cmp.case}:{key}", float("inf"), "no such parameter", False))
        cmp.mark_used(key)
        return None
    return g.T if transpose else g


def _compare_grads(cmp: Comparator, grads, carry):
    for key in [k for k in cmp.arrays if k.startswith("grad/")]:
        if key.endswith("local_ids"):
            cmp.check(key, carry.puzzle_identifiers)
        elif (g := _our_grad(cmp, key, grads)) is not None:
            cmp.check(key, g, **GRAD)


# ---------------------------------------------------------------- bf16 model traces

# A bf16 port cannot be bit-equal to the official bf16 run (the official code itself moves by about
# bf16_vs_fp32 between eager and torch.compile, or between attention kernels). Each float array is
# judged by its ratio max|ours - official bf16| / bf16_vs_fp32, the sidecar's size of bf16 rounding.
MAX_BF16_RATIO = 1.5
FEW_VALUES = 16
# Halting decisions, step counts and the data they select must match exactly (the seeds keep every
# |q_halt| at >= 3x its bf16 rounding).
BF16_EXACT = SELECTION + (
    "metric/count",
    "metric/steps",
)


def _ratio_check(cmp: Comparator, key: str, name: str, ours, ref, scale: float | None, how: str = ""):
    """max|ours - ref| against the bf16_vs_fp32 `scale` of array `key` (`how` says where it came from)."""
    cmp.mark_used(key)
    name = f"{cmp.case}:{name}"
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        cmp.results.append(Result(name, float("inf"), f"shape {ours.shape} vs {ref.shape}", False))
        return
    err = float(np.max(np.abs(ours - ref))) if ref.size else 0.0
    if not np.all(np.isfinite(ours)):
        err = float("inf")
    if scale is None:
        cmp.results.append(Result(name, err, "the sidecar gives no bf16_vs_fp32 for it", False))
        return
    ratio = err / scale if scale > 0 else (0.0 if err == 0 else float("inf"))
    tol = f"ratio={ratio:.2f} (limit {MAX_BF16_RATIO:g}), bf16_vs_fp32={scale:.2e}" + (f", {how}" if how else "")
    cmp.results.append(Result(name, err, tol, ratio <= MAX_BF16_RATIO, ratio))


def _bf16_yardsticks(per_key, arrays):
    """key -> (bf16_vs_fp32, note). Step 1 and gradients use the sidecar's `chained` value, later
    steps its `teacher_forced` one. Arrays of fewer than FEW_VALUES values (the per-row q logits,
    the losses) use the largest such value of the same quantity over the mode's steps: the maximum
    over 4 rows, or one sum whose terms partly cancel, is too noisy a measure of rounding size
    (e.g. q_halt_loss moves by 4.1e-3 at mlp_t's step 1 but by 7.1e-2 at eval step 2)."""

    def own(key):
        step = re.match(r"(train|eval)/(\d+)/", key)
        entry = per_key.get(key, {})
        return entry.get("chained" if step is None or step.group(2) == "1" else "teacher_forced")

    pooled: dict[tuple[str, str], float] = {}
    for key in per_key:
        m = re.match(r"(train|eval)/\d+/(.+)$", key)
        if m and key in arrays and np.size(arrays[key]) < FEW_VALUES and own(key) is not None:
            pooled[m.groups()] = max(pooled.get(m.groups(), 0.0), own(key))

    def yardstick(key):
        m = re.match(r"(train|eval)/\d+/(.+)$", key)
        if m and m.groups() in pooled and own(key) is not None:
            return pooled[m.groups()], f"largest over {m.group(1)} steps; this step's {own(key):.2e}"
        return own(key), ""

    return yardstick


def _sigmoid_bce(x, t):
    return np.maximum(x, 0.0) - x * t + np.log1p(np.exp(-np.abs(x)))


def _argmax_metrics(pred, labels, halted, q_halt):
    """The official ACT head's argmax-derived quantities for predictions `pred`, in float64."""
    mask = labels != IGNORE_LABEL_ID
    counts = mask.sum(-1)
    correct = mask & (pred == labels)
    seq_correct = correct.sum(-1) == counts
    valid = halted & (counts > 0)
    return {
        "accuracy": float(np.sum(np.where(valid, correct.sum(-1) / np.maximum(counts, 1), 0.0))),
        "exact_accuracy": float(np.sum(valid & seq_correct)),
        "q_halt_accuracy": float(np.sum(valid & ((q_halt >= 0) == seq_correct))),
        "q_halt_loss": float(np.sum(_sigmoid_bce(q_halt, seq_correct.astype(np.float64)))),
    }


def _compare_bf16_step(cmp: Comparator, prefix: str, label: str, carry, out, loss, metrics, yardstick, stability):
    """One step (step 1, or a later step restarted from the saved bf16 carry) against the trace."""
    a = cmp.arrays

    def ratio(name, ours, ref=None):
        key = f"{prefix}/{name}"
        _ratio_check(cmp, key, f"{label}/{name}", ours, a[key] if ref is None else ref, *yardstick(key))

    for name in ("logits", "q_halt_logits", "q_continue_logits"):
        ratio(name, np.asarray(out[name], np.float32))
    ratio("z_H", np.asarray(carry.z_H, np.float32))
    ratio("z_L", np.asarray(carry.z_L, np.float32))
    ratio("metric/lm_loss", metrics["lm_loss"])

    # (a) Halting, step counts and the data they select: exact.
    exact = {
        "halted": carry.halted,
        "steps": carry.steps,
        "all_finish": carry.halted.all(),
        "current_inputs": carry.inputs,
        "current_labels": carry.labels,
        "current_puzzle_identifiers": carry.puzzle_identifiers,
        "metric/count": metrics["count"],
        "metric/steps": metrics["steps"],
    }
    for name in BF16_EXACT:
        cmp.check(f"{prefix}/{name}", exact[name], f"{label}/{name}")

    # (b) The argmax at every position whose top-1/top-2 gap in the official bf16 logits is at least
    # the sidecar's threshold (3x the step-local bf16 rounding of the logits); those positions must be
    # the ones the sidecar counted.
    ref_logits = np.asarray(a[f"{prefix}/logits"], np.float64)
    top2 = np.sort(ref_logits, axis=-1)[..., -2:]
    stable = (top2[..., 1] - top2[..., 0]) >= stability["threshold"]
    labels = np.asarray(a[f"{prefix}/current_labels"])
    name = f"{cmp.case}:{label}/argmax@stable"
    counted = (int(stable.sum()), int((stable & (labels != IGNORE_LABEL_ID)).sum()))
    if counted != (stability["stable"], stability["stable_labelled"]):
        sidecar = (stability["stable"], stability["stable_labelled"])
        msg = f"stable (labelled) positions {counted}, the sidecar counts {sidecar}"
        cmp.results.append(Result(name, float("inf"), msg, False))
    ref_pred = ref_logits.argmax(-1)
    our_pred = np.asarray(out["logits"], np.float32).argmax(-1)
    bad = int(np.sum((our_pred != ref_pred) & stable))
    free = int(np.sum((our_pred != ref_pred) & ~stable))
    note = f"exact at {counted[0]} stable positions; {free} of {stable.size - counted[0]} unstable ones differ"
    cmp.results.append(Result(name, float(bad), note, bad == 0))

    # Argmax-derived metrics and the exactness target of the q_halt loss. At unstable positions our
    # argmax may differ; these quantities then move by exactly what those flips change, computed from
    # the trace's own labels, halting and q_halt. Without such flips the trace's values stand as they are.
    halted = np.asarray(a[f"{prefix}/halted"], bool)
    q_halt = np.asarray(a[f"{prefix}/q_halt_logits"], np.float64)
    mixed = np.where(stable, ref_pred, our_pred)
    base, moved = _argmax_metrics(ref_pred, labels, halted, q_halt), _argmax_metrics(mixed, labels, halted, q_halt)
    delta = {k: moved[k] - base[k] for k in base}
    flips = int(np.sum(mixed != ref_pred))
    for name in ("accuracy", "exact_accuracy", "q_halt_accuracy"):
        key = f"{prefix}/metric/{name}"
        cmp.mark_used(key)
        expected = float(a[key]) + delta[name]
        err = abs(float(metrics[name]) - expected)
        note = f", {expected:g} after {flips} unstable argmax flips" if delta[name] else ""
        # accuracy is a float32 sum of fractions: exact up to its rounding.
        cmp.results.append(Result(f"{cmp.case}:{label}/metric/{name}", err, "exact" + note, err <= 1e-6))
    ratio("metric/q_halt_loss", metrics["q_halt_loss"], float(a[f"{prefix}/metric/q_halt_loss"]) + delta["q_halt_loss"])
    ratio("loss", loss, float(a[f"{prefix}/loss"]) + 0.5 * delta["q_halt_loss"])


def _compare_bf16_grads(cmp: Comparator, grads, carry, yardstick):
    for key in [k for k in cmp.arrays if k.startswith("grad/")]:
        label = f"train/1[step-1]/{key}"
        if key.endswith("local_ids"):
            cmp.check(key, carry.puzzle_identifiers, label)
        elif (g := _our_grad(cmp, key, grads)) is not None:
            _ratio_check(cmp, key, label, g, cmp.arrays[key], *yardstick(key))


def check_bf16_trace(case: str, meta, arrays) -> Comparator:
    """A trace in a 16-bit forward dtype, judged against the sidecar's bf16_vs_fp32 yardstick.

    Step 1 runs from the initial carry, every later step from the trace's saved previous carry: the
    chained bf16 recursion is chaotic (after one ACT step the official bf16 and float32 runs are
    O(1) apart for MLP-T), so only step 1 and teacher-forced steps are meaningful."""
    cmp = Comparator(case, arrays)
    yard = meta.get("bf16_vs_fp32")
    if not yard or "per_key" not in yard or "argmax_stability" not in yard:
        cmp.results.append(Result(case, float("inf"), "16-bit trace without a bf16_vs_fp32 yardstick", False))
        return cmp
    arch, model, variables, table, batches = _load_trace(cmp, meta, arrays)
    step = _make_step(model, arch)
    yardstick = _bf16_yardsticks(yard["per_key"], arrays)
    rng = jax.random.key(0)
    for mode, train in (("train", True), ("eval", False)):
        n = max(int(m.group(1)) for k in arrays if (m := re.match(rf"{mode}/(\d+)/logits$", k)))
        for k in range(1, n + 1):
            batch = batches["batch"] if (k == 1 or mode == "eval") else batches["batch2"]
            prefix = f"{mode}/{k}"
            if k == 1:
                start, label = initial_carry(model, batch["inputs"].shape[0]), f"{prefix}[step-1]"
            else:
                start, label = _saved_carry(arrays, f"{mode}/{k - 1}", model.dtype), f"{prefix}[teacher-forced]"
            rng, sub = jax.random.split(rng)
            carry, out, loss, metrics, grads = step(variables, table, start, batch, sub, train=train)
            stability = yard["argmax_stability"]["per_step"].get(prefix)
            if stability is None:
                cmp.results.append(Result(f"{case}:{prefix}", float("inf"), "no argmax_stability for it", False))
                continue
            _compare_bf16_step(cmp, prefix, label, carry, out, loss, metrics, yardstick, stability)
            if k == 1 and train:
                _compare_bf16_grads(cmp, grads, carry, yardstick)
    return cmp


# ---------------------------------------------------------------- function / optimizer cases


def check_stablemax(case, meta, a) -> Comparator:
    cmp = Comparator(case, a)
    logits, labels = jnp.asarray(a["logits"]), jnp.asarray(a["labels"])
    cmp.mark_used("logits", "labels")
    cmp.check("log_stablemax", log_stablemax(logits))
    cmp.check("log_stablemax_f32", log_stablemax(logits))
    cmp.check("stablemax_cross_entropy", stablemax_cross_entropy(logits, labels))
    if "ce_with_valid_mask" in a:
        cmp.check("ce_with_valid_mask", stablemax_cross_entropy(logits, labels, valid_mask=labels != IGNORE_LABEL_ID))
    grad = jax.grad(lambda x: stablemax_cross_entropy(x, labels).sum())(logits)
    cmp.check("grad_logits", grad)
    return cmp


def check_adam_atan2(case, meta, a) -> Comparator:
    cmp = Comparator(case, a)
    b1, b2 = (float(x) for x in a["betas"])
    tx = adam_atan2(float(a["lr"]), b1, b2, float(a["weight_decay"]))
    p = jnp.asarray(a["param0"], jnp.float32)
    state = tx.init(p)
    cmp.mark_used("param0", "betas", "lr", "weight_decay", *(k for k in a if k.startswith("variant/")))
    k = 1
    while f"grad/{k}" in a:
        upd, state = tx.update(jnp.asarray(a[f"grad/{k}"], jnp.float32), state, p)
        p = p + upd
        cmp.mark_used(f"grad/{k}")
        cmp.check(f"param/{k}", p, rtol=1e-6, atol=1e-7)
        cmp.check(f"exp_avg/{k}", state.mu, rtol=1e-6, atol=1e-9)
        cmp.check(f"exp_avg_sq/{k}", state.nu, rtol=1e-6, atol=1e-12)
        k += 1
    return cmp


def check_signsgd(case, meta, a) -> Comparator:
    cmp = Comparator(case, a)
    cmp.mark_used("table_before", "local_ids", "local_grads", "lr", "weight_decay")
    new = sign_sgd_sparse_update(
        jnp.asarray(a["table_before"]),
        jnp.asarray(a["local_ids"], jnp.int32),
        jnp.asarray(a["local_grads"]),
        float(a["lr"]),
        float(a["weight_decay"]),
    )
    cmp.check("table_after", new, rtol=1e-6, atol=1e-7)
    return cmp


def check_lr_schedule(case, meta, a) -> Comparator:
    cmp = Comparator(case, a)
    cmp.mark_used("steps", "base_lr", "warmup", "total")
    for key in [k for k in a if k.startswith("lr/min_ratio_")]:
        ratio = float(key[len("lr/min_ratio_") :])
        ours = cosine_lr(jnp.asarray(a["steps"]), float(a["base_lr"]), int(a["warmup"]), int(a["total"]), ratio)
        cmp.check(key, ours, rtol=1e-6, atol=1e-6 * float(a["base_lr"]))
    return cmp


def _dispatch(meta, arrays):
    if meta.get("kind") == "model_trace":
        if meta.get("model_config", {}).get("forward_dtype", "float32") != "float32":
            return check_bf16_trace
        return check_model_trace
    keys = set(arrays.keys())
    if "log_stablemax" in keys:
        return check_stablemax
    if "exp_avg/1" in keys:
        return check_adam_atan2
    if "table_after" in keys:
        return check_signsgd
    if any(k.startswith("lr/") for k in keys):
        return check_lr_schedule
    return None


def check_directory(directory: Path) -> list[Result]:
    results = []
    cases = sorted(directory.glob("*.json"))
    if not cases:
        return [Result(f"{directory}", float("inf"), "no <case>.json fixtures found", False)]
    for sidecar in cases:
        meta = json.loads(sidecar.read_text())
        npz = sidecar.with_name(meta.get("npz", sidecar.stem + ".npz"))
        if not npz.exists():
            results.append(Result(sidecar.stem, float("inf"), f"missing {npz.name}", False))
            continue
        arrays = dict(np.load(npz))
        checker = _dispatch(meta, arrays)
        if checker is None:
            results.append(Result(sidecar.stem, float("inf"), "unknown fixture kind", False))
            continue
        cmp = checker(sidecar.stem, meta, arrays)
        results.extend(cmp.results)
        for key in sorted(set(arrays) - cmp.used):
            results.append(Result(f"{sidecar.stem}:{key}", float("inf"), "not compared", False))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fixture_dirs", nargs="+", type=Path)
    parser.add_argument("--verbose", action="store_true", help="print every comparison, not only the worst per tensor")
    parser.add_argument(
        "--xla-excess-precision",
        action="store_true",
        help="let XLA keep 16-bit intermediates in float32 (its default, as in training) instead of rounding "
        "every 16-bit operation where the program says, as the official eager run does",
    )
    args = parser.parse_args(argv)
    # Set before JAX starts its backend (nothing above has); flags already in XLA_FLAGS win. These
    # tiny programs compile several times faster on CPU without LLVM's optimisation passes (the
    # numbers stay within float32 tolerance). XLA's excess precision would skip roundings that the
    # 16-bit program asks for; float32 programs are unaffected.
    flags = os.environ.get("XLA_FLAGS", "").split()
    if not any("xla_backend_optimization_level" in f for f in flags):
        flags.append("--xla_backend_optimization_level=0")
    if not args.xla_excess_precision and not any("xla_allow_excess_precision" in f for f in flags):
        flags.append("--xla_allow_excess_precision=false")
    os.environ["XLA_FLAGS"] = " ".join(flags)
    print(f"XLA_FLAGS={os.environ['XLA_FLAGS']}")
    jax.config.update("jax_default_matmul_precision", "highest")
    results = [r for d in args.fixture_dirs for r in check_directory(d)]
    worst: dict[str, Result] = {}
    for r in results:
        # One line per tensor: the chained and teacher-forced checks of a key are reported apart.
        if r.key not in worst or (not r.ok and worst[r.key].ok) or r.err > worst[r.key].err:
            worst[r.key] = r
    shown = results if args.verbose else worst.values()
    width = max(len(r.key) for r in shown)
    for r in shown:
        print(f"{'ok  ' if r.ok else 'FAIL'} {r.key:<{width}}  max_err={r.err:.3e}  ({r.tol})")
    failed = [r for r in results if not r.ok]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
