"""Analytic matmul FLOPs of TRM: one training step, one forward ACT step, one evaluation.

The formula (derived and checked against XLA's cost analysis in docs/performance.md) counts
matmuls only: embedding lookups, norms, RoPE, softmax and the optimizer are left out. With B
rows, S = seq_len + puzzle_emb_len positions, D = hidden_size, V = vocab and I the SwiGLU width:
one Block costs 2*B*S*(3*D*I) for the channel SwiGLU plus either the MLP-T token SwiGLU or the
attention projections, scores and values; a forward ACT step runs H_cycles*(L_cycles+1)*L_layers
Blocks plus the lm and q heads; the 1-step gradient backpropagates through the last H cycle only.
"""

from __future__ import annotations

from models.config import ArchConfig
from models.layers import swiglu_width
from models.trm import ModelDims, puzzle_prefix_len


def swiglu_matmul_params(width: int, expansion: float) -> int:
    inter = swiglu_width(width, expansion)
    return width * 2 * inter + inter * width  # gate_up_proj + down_proj


def block_flops(arch: ArchConfig, B: int, S: int) -> int:
    """Matmul FLOPs of one Block application on [B, S, D]."""
    D = arch.hidden_size
    flops = 2 * B * S * swiglu_matmul_params(D, arch.expansion)
    if arch.mlp_t:
        # The token SwiGLU maps S -> S for each of the B*D (row, channel) pairs.
        return flops + 2 * B * D * swiglu_matmul_params(S, arch.expansion)
    return flops + 2 * B * S * (3 * D * D + D * D) + 4 * B * S * S * D


def _block_and_heads(arch: ArchConfig, dims: ModelDims, B: int) -> tuple[int, int]:
    S, D = dims.seq_len + puzzle_prefix_len(arch), arch.hidden_size
    return block_flops(arch, B, S), 2 * B * S * D * dims.vocab_size + 2 * B * D * 2  # lm_head + q_head


def forward_flops(arch: ArchConfig, dims: ModelDims, B: int, H_cycles: int, L_cycles: int) -> int:
    """One forward ACT step on B rows: every cycle, then the heads."""
    block, heads = _block_and_heads(arch, dims, B)
    return H_cycles * (L_cycles + 1) * arch.L_layers * block + heads


def analytic_flops(arch: ArchConfig, dims: ModelDims, B: int, H_cycles: int, L_cycles: int) -> dict[str, int]:
    """Matmul FLOPs of one training step (one ACT step forward and backward on B rows)."""
    block, heads = _block_and_heads(arch, dims, B)
    forward = forward_flops(arch, dims, B, H_cycles, L_cycles)
    # Earlier cycles run under stop_gradient; backward costs 2x forward (input and weight grads).
    backward = 2 * ((L_cycles + 1) * arch.L_layers * block + heads)
    target = forward if not arch.no_ACT_continue and arch.halt_max_steps > 1 else 0
    return {"forward": forward + target, "backward": backward, "total": forward + target + backward}


def eval_flops(arch: ArchConfig, dims: ModelDims, rows: int, H_cycles: int, L_cycles: int) -> int:
    """One evaluation pass over `rows` rows: evaluation never halts early, so every row runs
    all halt_max_steps ACT steps forward."""
    return arch.halt_max_steps * forward_flops(arch, dims, rows, H_cycles, L_cycles)
