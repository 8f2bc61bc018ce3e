"""models/flops.py: the analytic matmul count, written out by hand for one small config."""

from __future__ import annotations

import pytest

from models.flops import analytic_flops, eval_flops, forward_flops
from models.trm import ModelDims
from training.config import compose, validate

# hidden 64, expansion 4: SwiGLU width round(4 * 64 * 2/3) = 171 -> 256; 81 tokens + 4 prefix
# positions = 85, token SwiGLU width round(4 * 85 * 2/3) = 227 -> 256; vocab 11; 2 layers.
D, I, S, I_T, V, LAYERS = 64, 256, 85, 256, 11, 2
DIMS = ModelDims(vocab_size=V, seq_len=81, num_puzzle_identifiers=1)
OVERRIDES = ["arch.hidden_size=64", "arch.num_heads=4", "arch.puzzle_emb_len=4", "arch.L_layers=2"]


def arch(*extra: str):
    return validate(compose("cfg_pretrain", [*OVERRIDES, *extra])).arch


def by_hand(B: int, mlp_t: bool) -> tuple[int, int]:
    """(one Block, the two heads) on B rows."""
    channel = 2 * B * S * (3 * D * I)
    mixing = 2 * B * D * (3 * S * I_T) if mlp_t else 2 * B * S * 4 * D * D + 4 * B * S * S * D
    return channel + mixing, 2 * B * S * D * V + 2 * B * D * 2


@pytest.mark.parametrize("mlp_t", [True, False])
def test_forward_and_training_step(mlp_t):
    a = arch(f"arch.mlp_t={str(mlp_t).lower()}", "arch.pos_encodings=none" if mlp_t else "arch.pos_encodings=rope")
    B, H, L = 8, 3, 4
    block, heads = by_hand(B, mlp_t)
    assert forward_flops(a, DIMS, B, H, L) == H * (L + 1) * LAYERS * block + heads
    step = analytic_flops(a, DIMS, B, H, L)
    # The 1-step gradient: backward (2x forward) through the last H cycle only.
    assert step["backward"] == 2 * ((L + 1) * LAYERS * block + heads)
    assert step["total"] == forward_flops(a, DIMS, B, H, L) + step["backward"]


def test_evaluation_runs_every_act_step_forward():
    a = arch("arch.halt_max_steps=5", "arch.mlp_t=true", "arch.pos_encodings=none")
    block, heads = by_hand(100, mlp_t=True)
    assert eval_flops(a, DIMS, 100, 2, 3) == 5 * (2 * 4 * LAYERS * block + heads)


def test_q_target_pass_counts_one_more_forward():
    a = arch("arch.no_ACT_continue=false")
    step = analytic_flops(a, DIMS, 8, 2, 2)
    assert step["forward"] == 2 * forward_flops(a, DIMS, 8, 2, 2)
