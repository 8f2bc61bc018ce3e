import jax
import jax.numpy as jnp
import numpy as np

from models.layers import apply_rope, rms_norm, rope_tables, swiglu_width, trunc_normal


def test_swiglu_width_rounds_half_to_even_then_up_to_256():
    assert swiglu_width(64, 4.0) == 256  # round(170.67) = 171 -> 256
    assert swiglu_width(512, 4.0) == 1536  # round(1365.33) = 1365 -> 1536
    assert swiglu_width(20, 4.0) == 256  # the MLP-T width for P + L = 20
    # 0.75 * 3 * 2/3 = 1.5 -> Python rounds half to even: 2, still one block of 256
    assert round(0.75 * 3 * 2 / 3) == 2 and swiglu_width(3, 0.75) == 256
    assert swiglu_width(384 * 2, 4.0) == 2048  # round(2048.0) = 2048 exactly


def test_rms_norm_axis_and_dtype():
    x = jax.random.normal(jax.random.key(0), (2, 5, 7)).astype(jnp.bfloat16)
    y = rms_norm(x, 1e-5)
    assert y.dtype == jnp.bfloat16
    ms = np.mean(np.square(np.asarray(y, np.float32)), axis=-1)
    np.testing.assert_allclose(ms, 1.0, rtol=2e-2)
    # Over another axis (the MLP-T token axis) the other axis is normalised instead.
    z = rms_norm(x.astype(jnp.float32), 1e-5, axis=1)
    np.testing.assert_allclose(np.mean(np.square(np.asarray(z)), axis=1), 1.0, rtol=1e-4)


def test_rope_preserves_norm_and_relative_positions():
    cos, sin = rope_tables(8, 6, 10000.0)
    q = jax.random.normal(jax.random.key(1), (1, 6, 2, 8))
    k = jax.random.normal(jax.random.key(2), (1, 6, 2, 8))
    rq, rk = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    np.testing.assert_allclose(jnp.linalg.norm(rq, axis=-1), jnp.linalg.norm(q, axis=-1), rtol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(rk, axis=-1), jnp.linalg.norm(k, axis=-1), rtol=1e-5)
    # Same vectors at every position: the score depends only on the position difference.
    qc = jnp.broadcast_to(q[:, :1], q.shape)
    kc = jnp.broadcast_to(k[:, :1], k.shape)
    s = jnp.einsum("bqhd,bkhd->bhqk", apply_rope(qc, cos, sin), apply_rope(kc, cos, sin))[0, 0]
    np.testing.assert_allclose(s[0, 1], s[3, 4], rtol=1e-4)
    np.testing.assert_allclose(s[1, 3], s[2, 4], rtol=1e-4)


def test_trunc_normal_has_requested_std_and_bounds():
    x = np.asarray(trunc_normal(0.5)(jax.random.key(0), (200_000,)))
    assert abs(x.std() - 0.5) < 0.01
    assert np.abs(x).max() <= 2 * 0.5 / 0.87962566103423978 + 1e-6
    assert not np.any(trunc_normal(0.0)(jax.random.key(0), (3,)))
