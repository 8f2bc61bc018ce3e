"""Weights both ways between the official PyTorch state_dict and our parameters."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from omegaconf import OmegaConf

from models.config import ArchConfig
from models.torch_import import (
    COMPILED_PREFIX,
    export_state_dict,
    import_state_dict,
    official_name_to_path,
    path_to_official_name,
)
from models.trm import ModelDims, build_model, init_variables
from tests.pretrain_runs import assert_trees_equal
from training.config import CONFIG_DIR

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "trm_reference"
CASES = ("mlp_t", "att_rope", "att_learned")


def _fixture(case: str):
    """(arch, dims, official state_dict) of a golden model case; the arch is the fixture's
    model_config over the official defaults, as scripts/check_parity.py builds it."""
    mc = json.loads((FIXTURES / f"{case}.json").read_text())["model_config"]
    base = OmegaConf.load(Path(CONFIG_DIR) / "arch" / "trm.yaml")
    merged = OmegaConf.merge(base, {k: v for k, v in mc.items() if k in ArchConfig.model_fields})
    arch = ArchConfig.model_validate({**OmegaConf.to_container(merged, resolve=True), "attention_impl": "xla"})
    dims = ModelDims(mc["vocab_size"], mc["seq_len"], mc["num_puzzle_identifiers"])
    arrays = np.load(FIXTURES / f"{case}.npz")
    state_dict = {k.removeprefix("param/"): arrays[k] for k in arrays.files if k.startswith("param/")}
    return arch, dims, state_dict


def _template(arch: ArchConfig, dims: ModelDims):
    """Shapes and dtypes of the model's variables, without running (or compiling) its init."""
    return jax.eval_shape(lambda: init_variables(build_model(arch, dims), jax.random.key(0)))


def _random_weights(arch: ArchConfig, dims: ModelDims, seed: int = 0):
    rng = np.random.default_rng(seed)
    variables = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), _template(arch, dims))
    table = rng.normal(size=(dims.num_puzzle_identifiers, arch.puzzle_emb_ndim)).astype(np.float32)
    return variables, table


@pytest.mark.parametrize("case", CASES)
def test_export_of_a_fresh_model_has_exactly_the_official_names_and_shapes(case):
    arch, dims, official = _fixture(case)
    variables, table = _random_weights(arch, dims)
    exported = export_state_dict(variables, table)
    assert set(exported) == set(official)
    for name, value in official.items():
        assert exported[name].shape == value.shape, name
        assert exported[name].dtype == np.float32, name


@pytest.mark.parametrize("case", CASES)
def test_official_weights_survive_import_then_export_bitwise(case):
    arch, dims, official = _fixture(case)
    params, buffers, table = import_state_dict(official, _template(arch, dims))
    exported = export_state_dict({"params": params, "buffers": buffers}, table)
    assert exported.keys() == official.keys()
    for name, value in official.items():
        assert exported[name].tobytes() == value.astype(np.float32).tobytes(), name


@pytest.mark.parametrize("forward_dtype", ["bfloat16", "float32"])
def test_import_of_export_gives_back_the_same_parameters_bitwise(forward_dtype):
    arch, dims, _ = _fixture("att_learned")
    arch = arch.model_copy(update={"forward_dtype": forward_dtype})
    variables, table = _random_weights(arch, dims, seed=3)
    assert variables["buffers"]["H_init"].dtype == np.dtype(forward_dtype)
    params, buffers, got_table = import_state_dict(export_state_dict(variables, table), variables)
    assert_trees_equal(params, variables["params"])
    assert_trees_equal(buffers, variables["buffers"])
    assert got_table.tobytes() == table.tobytes()


def test_compiled_names_carry_the_torch_compile_prefix_and_import_back():
    arch, dims, official = _fixture("mlp_t")
    variables, table = _random_weights(arch, dims)
    exported = export_state_dict(variables, table, prefix=COMPILED_PREFIX + "model.inner.")
    assert set(exported) == {COMPILED_PREFIX + name for name in official}
    params, _, got_table = import_state_dict(exported, variables)
    assert_trees_equal(params, variables["params"])
    assert got_table.tobytes() == table.tobytes()


def test_name_mapping_is_its_own_inverse_on_every_official_name():
    names = set().union(*(_fixture(case)[2] for case in CASES))
    for name in names:
        collection, path, _ = official_name_to_path(name)
        assert path_to_official_name(collection, path) == name


def test_without_a_puzzle_embedding_no_table_is_exported():
    arch, dims, official = _fixture("att_rope")
    variables, _ = _random_weights(arch, dims)
    exported = export_state_dict(variables, np.zeros((dims.num_puzzle_identifiers, 0), np.float32))
    assert set(exported) == set(official) - {"model.inner.puzzle_emb.weights"}
    assert import_state_dict(exported, variables)[2] is None


def test_an_array_with_no_official_counterpart_is_named_in_the_error():
    with pytest.raises(KeyError, match="params/L_level/scale"):
        path_to_official_name("params", ("L_level", "scale"))
