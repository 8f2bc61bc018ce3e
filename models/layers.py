"""TRM building blocks: casted linears/embeddings, RMSNorm, SwiGLU, RoPE attention, the block.

Parameters are float32; every layer casts them to the compute dtype at use, as the official
`CastedLinear`/`CastedEmbedding` do. Kernels are stored [in, out] (PyTorch stores [out, in]).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

# Standard deviation of a standard normal truncated to [-2, 2]; the official
# trunc_normal_init_ divides by it so that `std` is the std of the samples.
_TRUNC_STD = 0.87962566103423978


def trunc_normal(std: float):
    """The official (JAX-style) truncated-normal init with the std correction."""

    def init(key, shape, dtype=jnp.float32):
        if std == 0:
            return jnp.zeros(shape, dtype)
        return (jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32) * (std / _TRUNC_STD)).astype(dtype)

    return init


def swiglu_width(hidden: int, expansion: float) -> int:
    """round(expansion * hidden * 2/3) rounded up to a multiple of 256 (Python round: half to even)."""
    inter = round(expansion * hidden * 2 / 3)
    return -(inter // -256) * 256


def rms_norm(x_BxSxD: jax.Array, eps: float, axis: int = -1) -> jax.Array:
    """Weightless RMSNorm in float32, cast back to the input dtype."""
    x = x_BxSxD.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=axis, keepdims=True) + eps)
    return x.astype(x_BxSxD.dtype)


class CastedLinear(nn.Module):
    features: int
    use_bias: bool = False
    kernel_init: object = None  # default: truncated normal, std 1/sqrt(fan_in)
    bias_init: object = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = self.kernel_init or trunc_normal(1.0 / math.sqrt(x.shape[-1]))
        kernel = self.param("kernel", init, (x.shape[-1], self.features))
        if not self.use_bias:
            return jnp.dot(x, kernel.astype(x.dtype))
        # As F.linear: the (compute-dtype) bias is added to the float32 accumulator, one rounding.
        bias = self.param("bias", self.bias_init, (self.features,)).astype(x.dtype)
        bias_f32 = bias.astype(jnp.float32).reshape((1,) * (x.ndim - 1) + (-1,))
        y = jnp.dot(x, kernel.astype(x.dtype), preferred_element_type=jnp.float32) + bias_f32
        return y.astype(x.dtype)


class CastedEmbedding(nn.Module):
    num_embeddings: int
    features: int
    init_std: float
    dtype: jnp.dtype

    def setup(self):
        self.embedding = self.param("embedding", trunc_normal(self.init_std), (self.num_embeddings, self.features))

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding.astype(self.dtype), ids, axis=0)


class SwiGLU(nn.Module):
    """down(silu(gate) * up); gate_up_proj's first half is the gate, as in the official code."""

    expansion: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        inter = swiglu_width(x.shape[-1], self.expansion)
        gate, up = jnp.split(CastedLinear(2 * inter, name="gate_up_proj")(x), 2, axis=-1)
        # SiLU in float32, rounded once, as F.silu on a 16-bit tensor (XLA would round every step
        # of x * sigmoid(x) in the 16-bit dtype). A no-op cast in float32.
        act = jax.nn.silu(gate.astype(jnp.float32)).astype(gate.dtype)
        return CastedLinear(x.shape[-1], name="down_proj")(act * up)


def rope_tables(head_dim: int, length: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """Rotate-half RoPE cos/sin tables [length, head_dim], float32, angles duplicated."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = jnp.outer(jnp.arange(length, dtype=jnp.float32), inv_freq)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def _rotate_half(x: jax.Array) -> jax.Array:
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x_BxSxHxK: jax.Array, cos_SxK: jax.Array, sin_SxK: jax.Array) -> jax.Array:
    x = x_BxSxHxK.astype(jnp.float32)
    out = x * cos_SxK[None, :, None, :] + _rotate_half(x) * sin_SxK[None, :, None, :]
    return out.astype(x_BxSxHxK.dtype)


def flash_rounded_attention(q_BxSxHxK: jax.Array, k_BxSxHxK: jax.Array, v_BxSxHxK: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(K)) v, rounded as the official code's attention on 16-bit inputs (the
    CPU flash kernel of F.scaled_dot_product_attention): scores, max and row sum in float32, the
    *unnormalised* exp(s - max) rounded to the input dtype for P.V (float32 accumulation), then
    times the reciprocal of the float32 row sum, one rounding. jax.nn.dot_product_attention
    instead rounds the normalised probabilities."""
    dtype = q_BxSxHxK.dtype
    scale = 1.0 / math.sqrt(q_BxSxHxK.shape[-1])
    s = jnp.einsum("bqhk,bshk->bhqs", q_BxSxHxK, k_BxSxHxK, preferred_element_type=jnp.float32) * scale
    e = jnp.exp(s - jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True)))  # the shift has no gradient
    inv_sum_BxQxH = jnp.swapaxes(1.0 / jnp.sum(e, axis=-1), 1, 2)
    out = jnp.einsum("bhqs,bshk->bqhk", e.astype(dtype), v_BxSxHxK, preferred_element_type=jnp.float32)
    return (out * inv_sum_BxQxH[..., None]).astype(dtype)


class Attention(nn.Module):
    """Full (non-causal, unmasked) multi-head attention: jax.nn.dot_product_attention in float32
    and for cuDNN; `flash_rounded_attention` for 16-bit dtypes on XLA (the official rounding)."""

    num_heads: int
    implementation: str | None  # None: XLA; "cudnn": fused flash attention on NVIDIA GPUs

    @nn.compact
    def __call__(self, x_BxSxD: jax.Array, rope: tuple[jax.Array, jax.Array] | None) -> jax.Array:
        B, S, D = x_BxSxD.shape
        head_dim = D // self.num_heads
        # One projection; its heads are ordered [Q heads, K heads, V heads].
        qkv = CastedLinear(3 * D, name="qkv_proj")(x_BxSxD).reshape(B, S, 3 * self.num_heads, head_dim)
        q, k, v = jnp.split(qkv, 3, axis=2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if self.implementation is None and q.dtype != jnp.float32:
            out = flash_rounded_attention(q, k, v)
        else:
            out = jax.nn.dot_product_attention(q, k, v, implementation=self.implementation)
        return CastedLinear(D, name="o_proj")(out.reshape(B, S, D))


class Block(nn.Module):
    """Post-norm block: token mixing (attention, or the MLP-T SwiGLU over positions) then a
    channel SwiGLU, each followed by a residual add and RMSNorm."""

    num_heads: int
    expansion: float
    mlp_t: bool
    eps: float
    attention_impl: str | None

    @nn.compact
    def __call__(self, x_BxSxD: jax.Array, rope) -> jax.Array:
        if self.mlp_t:
            x_BxDxS = jnp.swapaxes(x_BxSxD, 1, 2)
            # The official MLP-T normalises over the token axis (the last axis after the transpose).
            x_BxDxS = rms_norm(x_BxDxS + SwiGLU(self.expansion, name="mlp_t")(x_BxDxS), self.eps)
            x_BxSxD = jnp.swapaxes(x_BxDxS, 1, 2)
        else:
            attn = Attention(self.num_heads, self.attention_impl, name="self_attn")(x_BxSxD, rope)
            x_BxSxD = rms_norm(x_BxSxD + attn, self.eps)
        return rms_norm(x_BxSxD + SwiGLU(self.expansion, name="mlp")(x_BxSxD), self.eps)
