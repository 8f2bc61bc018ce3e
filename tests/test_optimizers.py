import jax.numpy as jnp
import numpy as np
import optax

from training.config import compose, validate
from training.optimizers import adam_atan2, build_optimizer, cosine_lr, sign_sgd_sparse_update


def test_adam_atan2_zero_gradient_only_decays():
    tx = adam_atan2(0.1, 0.9, 0.95, 0.5)
    p = jnp.array([2.0, -1.0])
    upd, _ = tx.update(jnp.zeros(2), tx.init(p), p)
    np.testing.assert_allclose(p + upd, p * (1 - 0.1 * 0.5), rtol=1e-6)


def test_adam_atan2_first_step_is_bounded_by_lr_over_bc1():
    tx = adam_atan2(0.01, 0.9, 0.95, 0.0)
    p = jnp.zeros(3)
    upd, state = tx.update(jnp.array([1e6, -1e-6, 3.0]), tx.init(p), p)
    # t=1: m = 0.1 g, v = 0.05 g^2 -> atan2(0.1 g, |g| sqrt(0.05)/sqrt(0.05)) = atan2(0.1, 1)*sign
    expected = -0.01 / 0.1 * np.arctan2(0.1, 1.0) * np.sign([1, -1, 1])
    np.testing.assert_allclose(upd, expected, rtol=1e-5)
    assert int(state.count) == 1


def test_sign_sgd_sums_duplicates_and_leaves_absent_rows():
    table = jnp.arange(12, dtype=jnp.float32).reshape(4, 3)
    ids = jnp.array([2, 0, 2])
    grads = jnp.array([[1.0, -1.0, 2.0], [0.5, 0.0, -3.0], [-1.0, 1.0, 1.0]])
    new = np.asarray(sign_sgd_sparse_update(table, ids, grads, 0.1, 0.2))
    t = np.asarray(table)
    np.testing.assert_allclose(new[0], t[0] * 0.98 - 0.1 * np.sign([0.5, 0.0, -3.0]), rtol=1e-6)
    # Row 2: grads sum to [0, 0, 3]: only decay where they cancel.
    np.testing.assert_allclose(new[2], t[2] * 0.98 - 0.1 * np.array([0.0, 0.0, 1.0]), rtol=1e-6)
    np.testing.assert_array_equal(new[[1, 3]], t[[1, 3]])


def test_schedule_warmup_cosine_and_no_clamp():
    lr = lambda s, r: float(cosine_lr(s, 1.0, 10, 110, r))
    assert lr(0, 0.0) == 0.0 and abs(lr(5, 0.0) - 0.5) < 1e-7
    assert abs(lr(10, 0.0) - 1.0) < 1e-7 and abs(lr(60, 0.0) - 0.5) < 1e-6 and abs(lr(110, 0.0)) < 1e-6
    assert abs(lr(60, 0.1) - (0.1 + 0.9 * 0.5)) < 1e-6
    assert lr(160, 0.0) > 0.4  # not clamped after total, as in the official code
    assert lr(50, 1.0) == 1.0  # min_ratio 1: constant after warmup


def test_build_optimizer_variants_update_params():
    p = {"w": jnp.ones(4)}
    g = {"w": jnp.array([1.0, -1.0, 0.5, 0.0])}
    for name in ("adam_atan2", "adamw", "lion"):
        cfg = validate(compose("quickstart", [f"optimizer={name}", "lr_warmup_steps=0"]))
        tx = build_optimizer(cfg, total_steps=100)
        upd, _ = tx.update(g, tx.init(p), p)
        new = optax.apply_updates(p, upd)["w"]
        assert new[0] < 1.0 and new[1] > new[0], name
    frozen = validate(compose("quickstart", ["freeze_weights=true"]))
    tx = build_optimizer(frozen, 100)
    upd, _ = tx.update(g, tx.init(p), p)
    assert not np.any(np.asarray(upd["w"]))
