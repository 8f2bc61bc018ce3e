import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from models.layers import (
    Attention,
    CastedLinear,
    SwiGLU,
    apply_rope,
    flash_rounded_attention,
    rms_norm,
    rope_tables,
    swiglu_width,
    trunc_normal,
)

BF16 = ml_dtypes.bfloat16


def as_written(f, *args):
    """Run `f` compiled so that XLA rounds every 16-bit operation where the program says. By default
    XLA may keep a 16-bit intermediate in float32 across an elementwise chain (as torch.compile does);
    the official eager code, and the parity check, round each one."""
    return jax.jit(f).lower(*args).compile(compiler_options={"xla_allow_excess_precision": False})(*args)


def _bf16(x):
    """float32 values rounded to bfloat16 (round to nearest even), back as float32."""
    return np.asarray(x, np.float32).astype(BF16).astype(np.float32)


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


def test_linear_bias_is_added_in_float32_and_rounded_once():
    """As F.linear: x.W accumulates in float32, the bias joins it there, one rounding."""
    layer = CastedLinear(1, use_bias=True)
    v = {"params": {"kernel": jnp.ones((2, 1)), "bias": jnp.full((1,), 2.0**-9)}}
    x = jnp.asarray([[1.0, 2.0**-8]], jnp.bfloat16)
    # 1 + 2^-8 + 2^-9 rounds once to 1 + 2^-7. Rounding x.W = 1 + 2^-8 first (a tie, to even: 1)
    # and again after the bias would give 1.
    y = layer.apply(v, x)
    assert y.dtype == jnp.bfloat16 and float(y[0, 0]) == 1 + 2.0**-7
    # float32 computes as x.W + b, bit for bit.
    xf = jax.random.normal(jax.random.key(0), (3, 8))
    vf = CastedLinear(5, use_bias=True, bias_init=jax.nn.initializers.normal()).init(jax.random.key(1), xf)
    k, b = vf["params"]["kernel"], vf["params"]["bias"]
    old = jax.jit(lambda x, k, b: jnp.dot(x, k) + b[None])  # the layer before bf16 rounding was matched
    np.testing.assert_array_equal(jax.jit(layer.clone(features=5).apply)(vf, xf), old(xf, k, b))


def test_swiglu_computes_silu_in_float32_and_rounds_once():
    x = jax.random.normal(jax.random.key(0), (2, 5, 64)).astype(jnp.bfloat16)
    m = SwiGLU(4.0)
    v = m.init(jax.random.key(1), x)
    out = np.asarray(as_written(m.apply, v, x), np.float32)
    # The same projections, the official elementwise rounding between them: F.silu in float32 and
    # one rounding, then the bf16 product (one rounding).
    p = v["params"]
    h = as_written(lambda x: jnp.dot(x, p["gate_up_proj"]["kernel"].astype(jnp.bfloat16)), x)
    gate, up = np.split(np.asarray(h, np.float32), 2, axis=-1)
    act = _bf16(gate / (1 + np.exp(-gate)))
    prod = jnp.asarray(_bf16(act * up), jnp.bfloat16)
    ref = as_written(lambda a: jnp.dot(a, p["down_proj"]["kernel"].astype(jnp.bfloat16)), prod)
    np.testing.assert_array_equal(out, np.asarray(ref, np.float32))

    # float32 computes down(silu(gate) * up), bit for bit.
    def old(x, p):
        gate, up = jnp.split(jnp.dot(x, p["gate_up_proj"]["kernel"]), 2, axis=-1)
        return jnp.dot(jax.nn.silu(gate) * up, p["down_proj"]["kernel"])

    xf = x.astype(jnp.float32)
    np.testing.assert_array_equal(jax.jit(m.apply)(v, xf), jax.jit(old)(xf, p))


def _official_cpu_flash(q, k, v):
    """The official bf16 CPU attention (flash kernel) in numpy: scores, max and row sum in float32,
    exp(s - max) rounded to bf16 for P.V, float32 accumulation, times 1/row sum, one rounding."""
    q, k, v = (np.asarray(t, np.float32).astype(np.float64) for t in (q, k, v))
    s = np.einsum("bqhd,bkhd->bhqk", q, k).astype(np.float32) * np.float32(1 / math.sqrt(q.shape[-1]))
    e = np.exp(s - s.max(-1, keepdims=True)).astype(np.float32)
    inv = np.float32(1) / e.sum(-1, dtype=np.float32)
    o = np.einsum("bhqk,bkhd->bqhd", _bf16(e).astype(np.float64), v).astype(np.float32)
    return _bf16(o * np.swapaxes(inv, 1, 2)[..., None])


def test_attention_rounds_like_the_official_flash_kernel_in_bf16():
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (2 * jax.random.normal(kk, (2, 20, 4, 16)).astype(jnp.bfloat16) for kk in keys)
    ours = np.asarray(as_written(flash_rounded_attention, q, k, v), np.float32)
    np.testing.assert_array_equal(ours, _official_cpu_flash(q, k, v))
    # jax.nn.dot_product_attention rounds the normalised probabilities instead: not the same numbers.
    xla = np.asarray(as_written(jax.nn.dot_product_attention, q, k, v), np.float32)
    assert np.mean(xla != ours) > 0.05
    # In float32 the two agree to rounding.
    f32 = [t.astype(jnp.float32) for t in (q, k, v)]
    np.testing.assert_allclose(flash_rounded_attention(*f32), jax.nn.dot_product_attention(*f32), atol=1e-5)


def test_attention_module_picks_the_rounding_by_dtype():
    """bf16 on XLA: the official flash rounding; float32 (and cuDNN): jax.nn.dot_product_attention."""
    x = jax.random.normal(jax.random.key(0), (2, 6, 32))
    layer = Attention(num_heads=4, implementation=None)
    v = layer.init(jax.random.key(1), x, None)
    p = v["params"]

    def manual(x, attend):
        qkv = (x @ p["qkv_proj"]["kernel"].astype(x.dtype)).reshape(2, 6, 12, 8)
        out = attend(*jnp.split(qkv, 3, axis=2)).reshape(2, 6, 32)
        return out @ p["o_proj"]["kernel"].astype(x.dtype)

    np.testing.assert_array_equal(
        jax.jit(lambda x: layer.apply(v, x, None))(x), jax.jit(lambda x: manual(x, jax.nn.dot_product_attention))(x)
    )
    xb = x.astype(jnp.bfloat16)
    np.testing.assert_array_equal(
        as_written(lambda x: layer.apply(v, x, None), xb), as_written(lambda x: manual(x, flash_rounded_attention), xb)
    )
