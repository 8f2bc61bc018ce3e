import json
import os

import numpy as np
import pytest

from dataset.common import (
    DatasetError,
    dihedral_transform,
    inverse_dihedral_transform,
    verify_manifest,
    write_manifest,
    write_split,
)


def _tiny_set(n=3, seq_len=4):
    tokens = np.arange(n * seq_len).reshape(n, seq_len) % 5
    return {
        "inputs": tokens,
        "labels": tokens,
        "puzzle_identifiers": np.zeros(n),
        "puzzle_indices": np.arange(n + 1),
        "group_indices": np.array([0, n]),
    }


@pytest.mark.parametrize("tid", range(8))
def test_dihedral_inverse_round_trip(tid):
    grid = np.arange(12).reshape(3, 4)
    assert np.array_equal(inverse_dihedral_transform(dihedral_transform(grid, tid), tid), grid)


def test_dihedral_transforms_are_distinct():
    grid = np.arange(9).reshape(3, 3)
    assert len({dihedral_transform(grid, t).tobytes() for t in range(8)}) == 8


def test_write_split_dtypes_and_metadata(tmp_path):
    meta = write_split(
        str(tmp_path),
        "train",
        {"all": _tiny_set()},
        pad_id=0,
        ignore_label_id=0,
        vocab_size=5,
        num_puzzle_identifiers=1,
    )
    assert np.load(tmp_path / "train" / "all__inputs.npy").dtype == np.uint8
    assert np.load(tmp_path / "train" / "all__puzzle_indices.npy").dtype == np.int32
    on_disk = json.loads((tmp_path / "train" / "dataset.json").read_text())
    assert on_disk == meta.model_dump()
    assert (meta.total_puzzles, meta.total_groups, meta.seq_len) == (3, 1, 4)


def test_write_split_rejects_out_of_vocab_tokens(tmp_path):
    with pytest.raises(DatasetError, match="vocab_size"):
        write_split(
            str(tmp_path),
            "train",
            {"all": _tiny_set()},
            pad_id=0,
            ignore_label_id=0,
            vocab_size=3,
            num_puzzle_identifiers=1,
        )


def test_manifest_detects_corruption(tmp_path):
    write_split(
        str(tmp_path),
        "train",
        {"all": _tiny_set()},
        pad_id=0,
        ignore_label_id=0,
        vocab_size=5,
        num_puzzle_identifiers=1,
    )
    write_manifest(str(tmp_path), "test", {"seed": 0})
    verify_manifest(str(tmp_path))
    with open(os.path.join(tmp_path, "train", "dataset.json"), "a") as f:
        f.write(" ")
    with pytest.raises(DatasetError, match="dataset.json"):
        verify_manifest(str(tmp_path))
