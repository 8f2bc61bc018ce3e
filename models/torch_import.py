"""Move weights between official PyTorch TRM state_dicts and this project's parameters.

Official names look like `[_orig_mod.]model.inner.L_level.layers.0.mlp.gate_up_proj.weight`
(the `_orig_mod.` prefix appears in checkpoints saved from a torch.compile'd module). Linear
weights are [out, in] in PyTorch and [in, out] here; embeddings keep their layout. One table
(`_LEAVES`) defines the correspondence; import and export both read it.

    import torch, numpy as np
    sd = {k: v.float().numpy() for k, v in torch.load("step_N", map_location="cpu").items()}
    params, buffers, puzzle_table = import_state_dict(sd, init_variables(model, key))
    sd = export_state_dict({"params": params, "buffers": buffers}, puzzle_table)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

OFFICIAL_PREFIX = "model.inner."
# What torch.compile'd modules (the official training script's default) prepend to every name.
COMPILED_PREFIX = "_orig_mod."
BUFFERS = ("H_init", "L_init")
PUZZLE_TABLE = "puzzle_emb.weights"
# Official leaf name -> (our leaf name, whether the array is transposed between the two).
_LEAVES = {"weight": ("kernel", True), "embedding_weight": ("embedding", False), "bias": ("bias", False)}
_OUR_LEAVES = {ours: (official, transpose) for official, (ours, transpose) in _LEAVES.items()}
_PREFIX = re.compile(r"^(_orig_mod\.)?(model\.)?(inner\.)?")
# Rebuilt from the config by the official code, so never needed and never exported.
_NON_PERSISTENT = ("cos_cached", "sin_cached", "local_weights", "local_ids")


def official_name_to_path(name: str) -> tuple[str, tuple[str, ...], bool]:
    """(collection, path, transpose) for an official state_dict name."""
    name = _PREFIX.sub("", name)
    if name in BUFFERS:
        return "buffers", (name,), False
    if name == PUZZLE_TABLE:
        return "puzzle_emb", (), False
    *modules, leaf = re.sub(r"layers\.(\d+)", r"layers_\1", name).split(".")
    if leaf not in _LEAVES:
        raise KeyError(f"unrecognised official parameter name {name!r}")
    ours, transpose = _LEAVES[leaf]
    return "params", (*modules, ours), transpose


def path_to_official_name(collection: str, path: tuple[str, ...], prefix: str = OFFICIAL_PREFIX) -> str:
    """The inverse of `official_name_to_path`: the official name of one of our arrays."""
    if collection == "buffers" and path and path[0] in BUFFERS:
        return prefix + path[0]
    if collection == "puzzle_emb":
        return prefix + PUZZLE_TABLE
    *modules, leaf = path
    if collection != "params" or leaf not in _OUR_LEAVES:
        raise KeyError(f"no official name for {collection}/{'/'.join(path)}")
    modules = [re.sub(r"^layers_(\d+)$", r"layers.\1", m) for m in modules]
    return prefix + ".".join([*modules, _OUR_LEAVES[leaf][0]])


def import_state_dict(state_dict: Mapping[str, np.ndarray], variables: Mapping[str, Any]):
    """Returns (params, buffers, puzzle_table) shaped like `variables` (from init_variables).

    Every parameter of ours must be present and shape-compatible, and every official entry
    must map to one of ours; anything else raises with the offending names.
    """
    flat = {c: traverse_util.flatten_dict(dict(variables[c])) for c in ("params", "buffers")}
    out = {c: {} for c in flat}
    table = None
    for name, value in state_dict.items():
        if name.endswith(_NON_PERSISTENT):
            continue
        coll, path, transpose = official_name_to_path(name)
        value = np.asarray(value)
        if coll == "puzzle_emb":
            table = value.astype(np.float32)
            continue
        if path not in flat[coll]:
            raise KeyError(f"official parameter {name!r} has no counterpart {'/'.join(path)} in this architecture")
        value = value.T if transpose else value
        want = flat[coll][path]
        if value.shape != want.shape:
            raise ValueError(f"{name}: shape {value.shape} does not match ours {want.shape} (architecture mismatch?)")
        out[coll][path] = value.astype(want.dtype)
    for coll in flat:
        missing = set(flat[coll]) - set(out[coll])
        if missing:
            raise KeyError(f"state_dict lacks {sorted('/'.join(p) for p in missing)}")
    params = traverse_util.unflatten_dict(out["params"])
    buffers = traverse_util.unflatten_dict(out["buffers"])
    return params, buffers, table


def export_state_dict(
    variables: Mapping[str, Any], puzzle_table: np.ndarray | None, *, prefix: str = OFFICIAL_PREFIX
) -> dict[str, np.ndarray]:
    """The official state_dict of `{"params", "buffers"}` and the puzzle-embedding table, as
    float32 numpy arrays in the official layout (`import_state_dict` reverses it exactly).

    Buffers held in bfloat16/float16 are widened to float32, which is exact; the official model
    keeps them in its forward dtype, so a converter to torch may cast them back. A table with no
    columns (puzzle_emb_ndim = 0) is left out, as the official model then has no puzzle_emb.
    """
    out = {}
    for coll in ("params", "buffers"):
        for path, value in traverse_util.flatten_dict(dict(variables[coll])).items():
            name = path_to_official_name(coll, path, prefix)
            value = np.asarray(value, np.float32)
            out[name] = np.ascontiguousarray(value.T) if coll == "params" and _OUR_LEAVES[path[-1]][1] else value
    if puzzle_table is not None and np.shape(puzzle_table)[-1] > 0:
        out[path_to_official_name("puzzle_emb", (), prefix)] = np.asarray(puzzle_table, np.float32)
    return dict(sorted(out.items()))
