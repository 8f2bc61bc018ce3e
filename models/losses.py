"""Cross-entropies (stablemax, softmax) with an ignore label, and the ACT loss head.

The official code computes stablemax in float64. We compute in float32 (TPUs have no fast
float64) with a safe `where`, so the unused branch never produces inf/NaN gradients; the
parity check shows the result agrees with the float64 golden to ~1e-7 relative.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

IGNORE_LABEL_ID = -100


def _stablemax_s(x: jax.Array) -> jax.Array:
    """s(x) = x + 1 for x >= 0, 1 / (1 - x + 1e-30) for x < 0."""
    neg = 1.0 / (1.0 - jnp.minimum(x, 0.0) + 1e-30)
    return jnp.where(x < 0, neg, x + 1.0)


def log_stablemax(x: jax.Array, axis: int = -1) -> jax.Array:
    s = _stablemax_s(x)
    return jnp.log(s / jnp.sum(s, axis=axis, keepdims=True))


def stablemax_cross_entropy(logits: jax.Array, labels: jax.Array, valid_mask=None) -> jax.Array:
    """Per-token -log stablemax prob of the label, 0 where ignored (float32)."""
    valid = labels != IGNORE_LABEL_ID if valid_mask is None else valid_mask
    logp = log_stablemax(logits.astype(jnp.float32))
    picked = jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
    return -jnp.where(valid, picked, 0.0)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, valid_mask=None) -> jax.Array:
    valid = labels != IGNORE_LABEL_ID if valid_mask is None else valid_mask
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), jnp.where(valid, labels, 0))
    return jnp.where(valid, ce, 0.0)


LOSSES = {"stablemax_cross_entropy": stablemax_cross_entropy, "softmax_cross_entropy": softmax_cross_entropy}


def answer_quality(preds_BxL: jax.Array, labels_BxL: jax.Array) -> dict[str, jax.Array]:
    """Per row: `accuracy` (fraction of labelled tokens right), `exact` (all right) and `labelled`
    (has at least one label), the quantities the official metrics sum."""
    mask = labels_BxL != IGNORE_LABEL_ID
    counts = mask.sum(-1)
    right = (mask & (preds_BxL == labels_BxL)).sum(-1)
    return {"accuracy": right / jnp.maximum(counts, 1), "exact": right == counts, "labelled": counts > 0}


def act_loss(outputs: dict[str, jax.Array], carry, *, loss_type: str):
    """Official ACTLossHead: returns (total loss summed over the batch, metric sums, predictions).

    `outputs` are an ACT step's (`logits`, `q_halt_logits`, `q_continue_logits`, and
    `target_q_continue` when the Q-continue head is trained); `carry` is the carry after that
    step (its `labels`, `halted` and `steps` are read). lm loss is normalised per sequence by its
    number of valid labels; the Q-halt head learns whether the sequence is exactly right. Metrics
    count only rows that halted and have labels.
    """
    logits_BxLxV, q_halt_B, q_continue_B = outputs["logits"], outputs["q_halt_logits"], outputs["q_continue_logits"]
    target_q_continue_B = outputs.get("target_q_continue")
    labels_BxL, halted_B, steps_B = carry.labels, carry.halted, carry.steps
    mask = labels_BxL != IGNORE_LABEL_ID
    counts = mask.sum(-1)
    divisor = jnp.maximum(counts, 1)[:, None]
    preds = jnp.argmax(logits_BxLxV, axis=-1)
    is_correct = mask & (preds == labels_BxL)
    seq_correct = is_correct.sum(-1) == counts

    lm_loss = jnp.sum(LOSSES[loss_type](logits_BxLxV, labels_BxL, valid_mask=mask) / divisor)
    q_halt_loss = jnp.sum(optax.sigmoid_binary_cross_entropy(q_halt_B, seq_correct.astype(jnp.float32)))
    total = lm_loss + 0.5 * q_halt_loss

    valid = halted_B & (counts > 0)
    metrics = {
        "count": valid.sum(),
        "accuracy": jnp.sum(jnp.where(valid, (is_correct.astype(jnp.float32) / divisor).sum(-1), 0.0)),
        "exact_accuracy": (valid & seq_correct).sum(),
        # >= here while halting uses >, as in the official code.
        "q_halt_accuracy": (valid & ((q_halt_B >= 0) == seq_correct)).sum(),
        "steps": jnp.sum(jnp.where(valid, steps_B, 0)),
        "lm_loss": jax.lax.stop_gradient(lm_loss),
        "q_halt_loss": jax.lax.stop_gradient(q_halt_loss),
    }
    if target_q_continue_B is not None:
        q_continue_loss = jnp.sum(optax.sigmoid_binary_cross_entropy(q_continue_B, target_q_continue_B))
        metrics["q_continue_loss"] = jax.lax.stop_gradient(q_continue_loss)
        total = lm_loss + 0.5 * (q_halt_loss + q_continue_loss)
    return total, metrics, preds
