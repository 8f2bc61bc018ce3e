"""The architecture's validated schema (`configs/arch/trm.yaml`), kept next to the model it shapes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator


class Strict(BaseModel):
    """Frozen, and unknown keys are errors: a typo fails loudly instead of being ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ArchConfig(Strict):
    """The TRM architecture (`configs/arch/trm.yaml`), official field names."""

    name: Literal["trm"]
    loss_type: Literal["stablemax_cross_entropy", "softmax_cross_entropy"]
    halt_exploration_prob: float
    halt_max_steps: int
    H_cycles: int
    L_cycles: int
    H_layers: int
    L_layers: int
    hidden_size: int
    num_heads: int
    expansion: float
    puzzle_emb_ndim: int
    puzzle_emb_len: int
    pos_encodings: Literal["rope", "learned", "none"]
    forward_dtype: Literal["bfloat16", "float16", "float32"]
    mlp_t: bool
    no_ACT_continue: bool
    rms_norm_eps: float
    rope_theta: float
    # Scan the recursion (small programs, fast compiles) or unroll it (XLA may fuse across
    # cycles); both compute the same numbers.
    unroll_cycles: bool
    attention_impl: Literal["auto", "xla", "cudnn"]

    @field_validator("halt_max_steps", "H_cycles", "L_cycles", "L_layers", "hidden_size", "num_heads")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("halt_exploration_prob")
    @classmethod
    def _probability(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError("must be a probability in [0, 1]")
        return v

    @model_validator(mode="after")
    def _shapes(self) -> ArchConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}; "
                "pick num_heads that divides hidden_size"
            )
        if self.pos_encodings == "rope" and (self.hidden_size // self.num_heads) % 2:
            raise ValueError("rope needs an even head dimension (hidden_size / num_heads)")
        if self.puzzle_emb_ndim < 0 or self.puzzle_emb_len < 0:
            raise ValueError("puzzle_emb_ndim and puzzle_emb_len must be >= 0")
        return self
