import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from models.torch_import import import_state_dict
from models.trm import ModelDims, TRMInner, build_model, init_variables, num_parameters, puzzle_prefix_len
from training.config import compose, validate

FIXTURE = "../shared/fixtures/trm_reference/mlp_t.npz"


def _arch(*overrides):
    return validate(compose("quickstart", list(overrides))).arch


def test_puzzle_prefix_length_rules():
    assert puzzle_prefix_len(_arch("arch.puzzle_emb_len=4")) == 4
    # 0 means ceil(puzzle_emb_ndim / hidden_size)
    assert puzzle_prefix_len(_arch("arch.puzzle_emb_len=0", "arch.puzzle_emb_ndim=130")) == 3
    assert puzzle_prefix_len(_arch("arch.puzzle_emb_ndim=0")) == 0


@pytest.mark.parametrize(
    "variant", [["arch.mlp_t=true", "arch.pos_encodings=none"], ["arch.pos_encodings=learned"], []]
)
def test_num_parameters_matches_initialised_tree(variant):
    arch = _arch(*variant)
    dims = ModelDims(vocab_size=6, seq_len=16, num_puzzle_identifiers=7)
    counts = num_parameters(arch, vocab_size=6, seq_len=16, num_puzzle_identifiers=7)
    variables = init_variables(build_model(arch, dims), jax.random.key(0))
    assert counts["model"] == sum(math.prod(x.shape) for x in jax.tree.leaves(variables["params"]))
    assert counts["puzzle_emb"] == 7 * arch.puzzle_emb_ndim
    assert set(variables["buffers"]) == {"H_init", "L_init"}


def test_q_head_starts_at_official_init():
    arch = _arch()
    v = init_variables(build_model(arch, ModelDims(6, 16, 1)), jax.random.key(0))
    assert not np.any(v["params"]["q_head"]["kernel"])
    np.testing.assert_array_equal(v["params"]["q_head"]["bias"], [-5.0, -5.0])


def _fixture_model():
    import json

    meta = json.load(open(FIXTURE.replace(".npz", ".json")))
    mc = meta["model_config"]
    arch = _arch(
        "arch.mlp_t=true",
        "arch.pos_encodings=none",
        f"arch.hidden_size={mc['hidden_size']}",
        f"arch.num_heads={mc['num_heads']}",
        f"arch.puzzle_emb_len={mc['puzzle_emb_len']}",
        f"arch.L_layers={mc['L_layers']}",
    )
    model = build_model(arch, ModelDims(mc["vocab_size"], mc["seq_len"], mc["num_puzzle_identifiers"]))
    return model, init_variables(model, jax.random.key(0))


def test_import_official_state_dict_with_compile_prefix():
    model, variables = _fixture_model()
    arrays = np.load(FIXTURE)
    sd = {"_orig_mod." + k[len("param/") :]: arrays[k] for k in arrays if k.startswith("param/")}
    params, buffers, table = import_state_dict(sd, variables)
    w = arrays["param/model.inner.L_level.layers.0.mlp_t.gate_up_proj.weight"]
    np.testing.assert_array_equal(params["L_level"]["layers_0"]["mlp_t"]["gate_up_proj"]["kernel"], w.T)
    np.testing.assert_array_equal(buffers["H_init"], arrays["param/model.inner.H_init"])
    assert table.shape == (3, 64)


def test_import_rejects_missing_and_mismatched_entries():
    _, variables = _fixture_model()
    arrays = np.load(FIXTURE)
    sd = {k[len("param/") :]: arrays[k] for k in arrays if k.startswith("param/")}
    missing = {k: v for k, v in sd.items() if "lm_head" not in k}
    with pytest.raises(KeyError, match="lm_head"):
        import_state_dict(missing, variables)
    wrong = dict(sd, **{"model.inner.lm_head.weight": np.zeros((7, 64), np.float32)})
    with pytest.raises(ValueError, match="lm_head.weight: shape"):
        import_state_dict(wrong, variables)
    extra = dict(sd, **{"model.inner.L_level.layers.0.self_attn.qkv_proj.weight": np.zeros((192, 64), np.float32)})
    with pytest.raises(KeyError, match="no counterpart"):
        import_state_dict(extra, variables)


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_embedding_scales_multiply_in_float32_and_round_once(pos):
    """sqrt(512) and the learned-position 0.707106781 multiply the bf16 embedding in float32, one
    rounding each, as Python floats do in the official code (bf16 constants would be 22.625 and
    0.70703). Compiled without XLA's excess precision, i.e. rounding where the program says."""
    bf16 = ml_dtypes.bfloat16
    arch = _arch(
        "arch.hidden_size=512",
        "arch.num_heads=8",
        "arch.forward_dtype=bfloat16",
        f"arch.pos_encodings={pos}",
        "arch.puzzle_emb_ndim=512",
        "arch.puzzle_emb_len=1",
    )
    model = build_model(arch, ModelDims(6, 16, 3))
    v = init_variables(model, jax.random.key(0))
    inputs = jnp.asarray(np.random.default_rng(0).integers(0, 6, (2, 16)), jnp.int32)
    rows = jnp.asarray(np.random.default_rng(1).normal(size=(2, 512)), jnp.float32)

    def embed(v, inputs, rows):
        return model.apply(v, inputs, rows, method=TRMInner.embed)

    opts = {"xla_allow_excess_precision": False}
    out = np.asarray(jax.jit(embed).lower(v, inputs, rows).compile(compiler_options=opts)(v, inputs, rows), np.float32)

    def rnd(x):
        return np.asarray(x, np.float32).astype(bf16).astype(np.float32)

    tokens = rnd(np.asarray(v["params"]["embed_tokens"]["embedding"]))[np.asarray(inputs)]
    emb = np.concatenate([rnd(rows)[:, None], tokens], axis=1)
    if pos == "learned":
        emb = rnd(np.float32(0.707106781) * rnd(emb + rnd(v["params"]["embed_pos"]["embedding"])))
    np.testing.assert_array_equal(out, rnd(np.float32(math.sqrt(512)) * emb))
    assert np.any(out != rnd(np.float32(22.625) * emb))  # the bf16 constant would differ

    # float32 computes as before, bit for bit.
    arch32 = arch.model_copy(update={"forward_dtype": "float32"})
    model32 = build_model(arch32, ModelDims(6, 16, 3))
    v32 = init_variables(model32, jax.random.key(0))

    def old(p, inputs, rows):
        e = jnp.concatenate([rows[:, None], jnp.take(p["embed_tokens"]["embedding"], inputs, axis=0)], axis=1)
        if pos == "learned":
            e = 0.707106781 * (e + p["embed_pos"]["embedding"][None])
        return math.sqrt(512) * e

    new = jax.jit(lambda v, i, r: model32.apply(v, i, r, method=TRMInner.embed))(v32, inputs, rows)
    np.testing.assert_array_equal(new, jax.jit(old)(v32["params"], inputs, rows))
