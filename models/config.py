"""The architecture's validated schema (`configs/arch/trm.yaml`), kept next to the model it shapes."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Range-checked field types: a value outside gets a message naming the valid range.
PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, le=1)]


class Strict(BaseModel):
    """Frozen, and unknown keys are errors: a typo fails loudly instead of being ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ArchConfig(Strict):
    """The TRM architecture (`configs/arch/trm.yaml`), official field names."""

    name: Literal["trm"]
    loss_type: Literal["stablemax_cross_entropy", "softmax_cross_entropy"]
    halt_exploration_prob: Probability
    halt_max_steps: PosInt
    H_cycles: PosInt
    L_cycles: PosInt
    H_layers: NonNegInt
    L_layers: PosInt
    hidden_size: PosInt
    num_heads: PosInt
    expansion: PosFloat
    puzzle_emb_ndim: NonNegInt
    puzzle_emb_len: NonNegInt
    pos_encodings: Literal["rope", "learned", "none"]
    forward_dtype: Literal["bfloat16", "float16", "float32"]
    mlp_t: bool
    no_ACT_continue: bool
    rms_norm_eps: PosFloat
    rope_theta: PosFloat
    # Scan the recursion (small programs, fast compiles) or unroll it (XLA may fuse across
    # cycles); both compute the same numbers.
    unroll_cycles: bool
    attention_impl: Literal["auto", "xla", "cudnn"]

    @model_validator(mode="after")
    def _shapes(self) -> ArchConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}; "
                "pick num_heads that divides hidden_size"
            )
        if self.pos_encodings == "rope" and (self.hidden_size // self.num_heads) % 2:
            raise ValueError("rope needs an even head dimension (hidden_size / num_heads)")
        if self.puzzle_emb_len and self.puzzle_emb_ndim > self.puzzle_emb_len * self.hidden_size:
            raise ValueError(
                f"puzzle_emb_ndim={self.puzzle_emb_ndim} does not fit in puzzle_emb_len={self.puzzle_emb_len} "
                f"positions of hidden_size={self.hidden_size}: use puzzle_emb_len >= ceil(ndim / hidden_size), "
                "or 0 for that"
            )
        return self
