"""The TRM inner model and its recursion.

`TRMInner` holds the parameters (token/position embeddings, ONE shared `L_level` stack, LM and
Q heads) and the two persistent buffers H_init/L_init. `inner_forward` is the pure recursion:
H_cycles x (L_cycles latent updates + 1 answer update) through that one stack, all but the last
cycle without gradient (the official 1-step gradient).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.config import ArchConfig
from models.layers import Block, CastedEmbedding, CastedLinear, rope_tables, trunc_normal

# Official learned-position scale: the literal, not exactly 1/sqrt(2).
_LEARNED_POS_SCALE = 0.707106781


@dataclass(frozen=True)
class ModelDims:
    """Sizes that come from the dataset rather than the architecture config."""

    vocab_size: int
    seq_len: int
    num_puzzle_identifiers: int


def puzzle_prefix_len(arch: ArchConfig) -> int:
    """Prefix positions for the puzzle embedding: puzzle_emb_len, or ceil(ndim / hidden) if 0.
    Without a puzzle embedding there is no prefix (the official code would drop real tokens)."""
    if arch.puzzle_emb_ndim == 0:
        return 0
    return arch.puzzle_emb_len or -(arch.puzzle_emb_ndim // -arch.hidden_size)


def _cudnn_attention_compiles(arch: ArchConfig, seq_len: int) -> bool:
    """cuDNN's fused attention supports only some shapes and dtypes; probe this one."""
    shape = (1, seq_len, arch.num_heads, arch.hidden_size // arch.num_heads)
    x = jax.ShapeDtypeStruct(shape, jnp.dtype(arch.forward_dtype))
    try:
        jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn")).lower(x, x, x).compile()
        return True
    except Exception:
        return False


def attention_implementation(arch: ArchConfig, seq_len: int) -> str | None:
    """`auto`: cuDNN flash attention on NVIDIA GPUs for 16-bit dtypes when it supports the
    shape, else XLA's implementation (the only one on CPU and TPU)."""
    if arch.mlp_t or arch.attention_impl == "xla":
        return None
    if arch.attention_impl == "cudnn":
        return "cudnn"
    on_gpu = jax.default_backend() == "gpu"
    return "cudnn" if on_gpu and arch.forward_dtype != "float32" and _cudnn_attention_compiles(arch, seq_len) else None


class ReasoningModule(nn.Module):
    """The shared `L_level` stack; the injection is added before the blocks."""

    arch: ArchConfig
    attention_impl: str | None

    def setup(self):
        a = self.arch
        self.layers = [
            Block(a.num_heads, a.expansion, a.mlp_t, a.rms_norm_eps, self.attention_impl) for _ in range(a.L_layers)
        ]

    def __call__(self, z_BxSxD, injection_BxSxD, rope):
        z_BxSxD = z_BxSxD + injection_BxSxD
        for layer in self.layers:
            z_BxSxD = layer(z_BxSxD, rope)
        return z_BxSxD


class TRMInner(nn.Module):
    arch: ArchConfig
    dims: ModelDims
    attention_impl: str | None = None

    @property
    def dtype(self):
        return jnp.dtype(self.arch.forward_dtype)

    @property
    def total_len(self) -> int:
        return self.dims.seq_len + puzzle_prefix_len(self.arch)

    def setup(self):
        a, D = self.arch, self.arch.hidden_size
        std = 1.0 / math.sqrt(D)
        self.embed_tokens = CastedEmbedding(self.dims.vocab_size, D, std, self.dtype)
        if a.pos_encodings == "learned":
            self.embed_pos = CastedEmbedding(self.total_len, D, std, self.dtype)
        self.L_level = ReasoningModule(a, self.attention_impl)
        self.lm_head = CastedLinear(self.dims.vocab_size)
        self.q_head = CastedLinear(
            2, use_bias=True, kernel_init=nn.initializers.zeros, bias_init=nn.initializers.constant(-5.0)
        )
        # Stored in the compute dtype, like the official bf16 buffers.
        self.H_init = self.variable(
            "buffers", "H_init", lambda: trunc_normal(1.0)(self.make_rng("params"), (D,)).astype(self.dtype)
        )
        self.L_init = self.variable(
            "buffers", "L_init", lambda: trunc_normal(1.0)(self.make_rng("params"), (D,)).astype(self.dtype)
        )

    def rope(self):
        if self.arch.pos_encodings != "rope":
            return None
        return rope_tables(self.arch.hidden_size // self.arch.num_heads, self.total_len, self.arch.rope_theta)

    def embed(self, inputs_BxL: jax.Array, puzzle_rows_BxE: jax.Array | None) -> jax.Array:
        """Token embeddings with the zero-padded puzzle-embedding prefix, times sqrt(D)."""
        D, P = self.arch.hidden_size, puzzle_prefix_len(self.arch)
        emb = self.embed_tokens(inputs_BxL)
        if P:
            rows = puzzle_rows_BxE.astype(self.dtype)
            rows = jnp.pad(rows, ((0, 0), (0, P * D - rows.shape[-1])))
            emb = jnp.concatenate([rows.reshape(-1, P, D), emb], axis=1)
        # Python-float scales multiply in float32 and round once each, as in the official code (a
        # 16-bit constant would be 22.625 for sqrt(512), 0.70703 for the position scale).
        if self.arch.pos_encodings == "learned":
            emb = emb + self.embed_pos.embedding.astype(self.dtype)[None]
            emb = (_LEARNED_POS_SCALE * emb.astype(jnp.float32)).astype(self.dtype)
        return (math.sqrt(D) * emb.astype(jnp.float32)).astype(self.dtype)

    def reason(self, z_BxSxD, injection_BxSxD):
        return self.L_level(z_BxSxD, injection_BxSxD, self.rope())

    def heads(self, z_H_BxSxD):
        """LM logits over the token positions; (q_halt, q_continue) from the first position."""
        logits = self.lm_head(z_H_BxSxD)[:, puzzle_prefix_len(self.arch) :]
        q = self.q_head(z_H_BxSxD[:, 0]).astype(jnp.float32)
        return logits, q[..., 0], q[..., 1]

    def init_states(self):
        return self.H_init.value, self.L_init.value

    def __call__(self, inputs_BxL, puzzle_rows_BxE):
        """Touches every parameter once; used only by `init`."""
        emb = self.embed(inputs_BxL, puzzle_rows_BxE)
        z = self.reason(emb, emb)
        H_init, _ = self.init_states()
        return self.heads(z + H_init[None, None])


def build_model(arch: ArchConfig, dims: ModelDims) -> TRMInner:
    return TRMInner(arch, dims, attention_implementation(arch, dims.seq_len + puzzle_prefix_len(arch)))


def init_variables(model: TRMInner, rng: jax.Array) -> dict[str, Any]:
    """{'params': ..., 'buffers': {'H_init', 'L_init'}} for batch-independent shapes."""
    inputs = jnp.zeros((1, model.dims.seq_len), jnp.int32)
    rows = jnp.zeros((1, model.arch.puzzle_emb_ndim), jnp.float32)
    return dict(model.init(rng, inputs, rows))


def num_parameters(arch: ArchConfig, *, vocab_size: int, seq_len: int, num_puzzle_identifiers: int) -> dict[str, int]:
    """Trainable parameter counts: the model (optimised by Adam-style rules) and the puzzle
    embedding table (sign-SGD)."""
    model = TRMInner(arch, ModelDims(vocab_size, seq_len, num_puzzle_identifiers))
    shapes = jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))
    n_model = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))
    return {"model": n_model, "puzzle_emb": num_puzzle_identifiers * arch.puzzle_emb_ndim}


def _repeat(n: int, body: Callable, init, unroll: bool):
    if unroll:
        for _ in range(n):
            init = body(init)
        return init
    return jax.lax.fori_loop(0, n, lambda _, c: body(c), init)


def inner_forward(model: TRMInner, variables, z_H, z_L, input_emb, *, H_cycles: int, L_cycles: int):
    """The recursion. Returns the new (z_H, z_L); gradients reach parameters and input_emb only
    through the last H cycle (earlier cycles see stop-gradient parameters and inputs)."""
    unroll = model.arch.unroll_cycles

    def cycle(vars_, emb):
        def latent(z_L_, z_H_):
            return model.apply(vars_, z_L_, z_H_ + emb, method=TRMInner.reason)

        def body(c):
            z_H_, z_L_ = c
            z_L_ = _repeat(L_cycles, lambda zl: latent(zl, z_H_), z_L_, unroll)
            return model.apply(vars_, z_H_, z_L_, method=TRMInner.reason), z_L_

        return body

    frozen_vars, frozen_emb = jax.lax.stop_gradient((variables, input_emb))
    z_H, z_L = _repeat(H_cycles - 1, cycle(frozen_vars, frozen_emb), (z_H, z_L), unroll)
    z_H, z_L = jax.lax.stop_gradient((z_H, z_L))
    return cycle(variables, input_emb)((z_H, z_L))
