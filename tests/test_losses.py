from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

from models.losses import IGNORE_LABEL_ID, act_loss, log_stablemax, softmax_cross_entropy, stablemax_cross_entropy


def test_stablemax_matches_definition_and_gradient_is_finite_at_one():
    x = jnp.array([[1.0, -2.0, 0.0, 3.0]])
    s = np.array([2.0, 1 / 3, 1.0, 4.0])
    np.testing.assert_allclose(np.exp(log_stablemax(x))[0], s / s.sum(), rtol=1e-6)
    # x = 1 makes the unused branch 1/(1 - 1) in a naive float32 port; the gradient must stay finite.
    g = jax.grad(lambda z: stablemax_cross_entropy(z, jnp.array([[0]])).sum())(jnp.array([[[1.0, 1.0, -1.0]]]))
    assert np.all(np.isfinite(g))


def test_ignored_labels_contribute_nothing():
    logits = jax.random.normal(jax.random.key(0), (2, 3, 5))
    labels = jnp.array([[1, IGNORE_LABEL_ID, 2], [IGNORE_LABEL_ID] * 3])
    for fn in (stablemax_cross_entropy, softmax_cross_entropy):
        ce = fn(logits, labels)
        assert ce[0, 1] == 0 and np.all(ce[1] == 0) and ce[0, 0] > 0


def test_act_loss_metrics_follow_official_rules():
    V = 3
    labels = jnp.array([[1, 2, IGNORE_LABEL_ID], [0, 0, 0], [IGNORE_LABEL_ID] * 3])
    # Row 0 predicts its labels exactly; row 1 gets one of three wrong; row 2 has no labels.
    preds = jnp.array([[1, 2, 0], [0, 1, 0], [0, 0, 0]])
    logits = jax.nn.one_hot(preds, V) * 5.0
    q_halt = jnp.array([1.0, -1.0, 0.0])
    halted = jnp.array([True, True, True])
    steps = jnp.array([2, 3, 1])
    outputs = {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": jnp.zeros(3)}
    carry = SimpleNamespace(labels=labels, halted=halted, steps=steps)
    loss, m, out_preds = act_loss(outputs, carry, loss_type="softmax_cross_entropy")
    assert int(m["count"]) == 2  # the unlabelled row is not counted
    assert int(m["exact_accuracy"]) == 1
    np.testing.assert_allclose(float(m["accuracy"]), 1.0 + 2 / 3, rtol=1e-6)
    assert int(m["q_halt_accuracy"]) == 2  # (1 >= 0) == correct, (-1 >= 0) == wrong
    assert int(m["steps"]) == 5
    np.testing.assert_array_equal(out_preds, preds)
    # Row 2 counts as correct for the Q-halt target (0 of 0), as in the official code.
    bce = jax.nn.softplus(-q_halt) * jnp.array([1, 0, 1]) + jax.nn.softplus(q_halt) * jnp.array([0, 1, 0])
    np.testing.assert_allclose(float(m["q_halt_loss"]), float(bce.sum()), rtol=1e-5)
    np.testing.assert_allclose(float(loss), float(m["lm_loss"] + 0.5 * m["q_halt_loss"]), rtol=1e-6)


def test_q_continue_target_adds_its_loss():
    logits = jnp.zeros((2, 2, 3))
    labels = jnp.zeros((2, 2), jnp.int32)
    outputs = {"logits": logits, "q_halt_logits": jnp.zeros(2), "q_continue_logits": jnp.array([0.3, -0.2])}
    carry = SimpleNamespace(labels=labels, halted=jnp.ones(2, bool), steps=jnp.ones(2, jnp.int32))
    base, _, _ = act_loss(outputs, carry, loss_type="softmax_cross_entropy")
    targets = dict(outputs, target_q_continue=jnp.array([0.9, 0.1]))
    with_q, m, _ = act_loss(targets, carry, loss_type="softmax_cross_entropy")
    np.testing.assert_allclose(float(with_q - base), 0.5 * float(m["q_continue_loss"]), rtol=1e-6)
