import math

import jax
import numpy as np
import pytest

from models.torch_import import import_state_dict
from models.trm import ModelDims, build_model, init_variables, num_parameters, puzzle_prefix_len
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
