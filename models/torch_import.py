"""Import an official PyTorch TRM state_dict into this project's parameters.

Official names look like `[_orig_mod.]model.inner.L_level.layers.0.mlp.gate_up_proj.weight`
(the `_orig_mod.` prefix appears in checkpoints saved from a torch.compile'd module). Linear
weights are [out, in] in PyTorch and [in, out] here; embeddings keep their layout.

    import torch, numpy as np
    sd = {k: v.float().numpy() for k, v in torch.load("step_N", map_location="cpu").items()}
    params, buffers, puzzle_table = import_state_dict(sd, init_variables(model, key))
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

_PREFIX = re.compile(r"^(_orig_mod\.)?(model\.)?(inner\.)?")


def official_name_to_path(name: str) -> tuple[str, tuple[str, ...], bool]:
    """(collection, path, transpose) for an official state_dict name."""
    name = _PREFIX.sub("", name)
    if name in ("H_init", "L_init"):
        return "buffers", (name,), False
    if name == "puzzle_emb.weights":
        return "puzzle_emb", (), False
    parts = re.sub(r"layers\.(\d+)", r"layers_\1", name).split(".")
    leaf = parts[-1]
    if leaf == "embedding_weight":
        return "params", (*parts[:-1], "embedding"), False
    if leaf == "weight":
        return "params", (*parts[:-1], "kernel"), True
    if leaf == "bias":
        return "params", tuple(parts), False
    raise KeyError(f"unrecognised official parameter name {name!r}")


def import_state_dict(state_dict: Mapping[str, np.ndarray], variables: Mapping[str, Any]):
    """Returns (params, buffers, puzzle_table) shaped like `variables` (from init_variables).

    Every parameter of ours must be present and shape-compatible, and every official entry
    must map to one of ours; anything else raises with the offending names.
    """
    flat = {c: traverse_util.flatten_dict(dict(variables[c])) for c in ("params", "buffers")}
    out = {c: {} for c in flat}
    table = None
    for name, value in state_dict.items():
        if name.endswith(("cos_cached", "sin_cached", "local_weights", "local_ids")):
            continue  # non-persistent buffers, rebuilt from the config
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
