import json

import numpy as np
import pytest

from dataset.errors import DatasetError
from dataset.format import PuzzleDatasetMetadata, check_totals, load_metadata, merge_metadata, write_split

WRITE = dict(pad_id=0, ignore_label_id=0, vocab_size=5, num_puzzle_identifiers=1)


def _tiny_set(n=3, seq_len=4):
    tokens = np.arange(n * seq_len).reshape(n, seq_len) % 5
    return {
        "inputs": tokens,
        "labels": tokens,
        "puzzle_identifiers": np.zeros(n, np.int32),
        "puzzle_indices": np.arange(n + 1),
        "group_indices": np.array([0, n]),
    }


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


def test_write_split_refuses_an_empty_set_and_writes_nothing(tmp_path):
    empty = {k: v[:0] for k, v in _tiny_set().items()} | {
        "puzzle_indices": np.zeros(1, int),
        "group_indices": np.zeros(1, int),
    }
    with pytest.raises(DatasetError, match="all__inputs.npy: the set has no examples"):
        write_split(str(tmp_path), "test", {"all": empty}, **WRITE)
    assert not (tmp_path / "test").exists()


@pytest.mark.parametrize(
    ("field", "values", "message"),
    [
        ("puzzle_indices", np.array([0, 1, 1, 3]), "puzzle 1 has no examples"),
        ("group_indices", np.array([0, 0, 3]), "group 0 has no puzzles"),
        ("puzzle_indices", np.array([0, 1, 2]), "has 3 entries for 3 puzzles"),
        ("puzzle_identifiers", np.array([0.0, 0.0, 0.0]), "dtype float64 is not an integer type"),
        ("puzzle_identifiers", np.array([0, 1, 0]), "puzzle identifier 1 is outside the puzzle-embedding table"),
    ],
)
def test_write_split_checks_the_index_structure(tmp_path, field, values, message):
    with pytest.raises(DatasetError, match=message):
        write_split(str(tmp_path), "train", {"all": _tiny_set() | {field: values}}, **WRITE)


def _metadata(**changes):
    base = dict(WRITE, blank_identifier_id=0, seq_len=4, total_groups=2, total_puzzles=4, mean_puzzle_examples=1.5)
    return PuzzleDatasetMetadata(**(base | {"sets": ["all"]} | changes))


def test_merge_weights_mean_examples_by_puzzles_and_checks_the_format():
    a = _metadata(total_groups=2, total_puzzles=4, mean_puzzle_examples=1.5)  # 6 examples
    b = _metadata(total_groups=3, total_puzzles=1, mean_puzzle_examples=10.0, num_puzzle_identifiers=3)  # 10
    merged = merge_metadata([a, b], ["a", "b"])
    assert merged.mean_puzzle_examples == pytest.approx(16 / 5)
    assert (merged.total_groups, merged.total_puzzles, merged.num_puzzle_identifiers) == (5, 5, 4)
    assert merged.sets == ["all", "all1"]
    assert merge_metadata([a], ["a"]) == a
    with pytest.raises(DatasetError, match="'seq_len' differs: 4 in a vs 5 in b"):
        merge_metadata([a, _metadata(seq_len=5)], ["a", "b"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"pad_id": 0', "Invalid JSON"),
        (json.dumps(_metadata().model_dump() | {"total_groups": 0}), "total_groups: Input should be greater"),
        (json.dumps({k: v for k, v in _metadata().model_dump().items() if k != "seq_len"}), "seq_len: Field required"),
        (json.dumps(_metadata().model_dump() | {"pad_id": 7}), "pad_id=7 must be < vocab_size=5"),
    ],
)
def test_malformed_dataset_json_is_one_line_naming_the_file(tmp_path, content, message):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "dataset.json").write_text(content)
    with pytest.raises(DatasetError, match=message) as err:
        load_metadata(str(tmp_path), "train")
    assert str(tmp_path / "train" / "dataset.json") in str(err.value) and "\n" not in str(err.value)


def test_totals_must_match_the_arrays_except_the_official_one_example_convention():
    arrays = {"all": _tiny_set(n=3) | {"group_indices": np.array([0, 1, 3])}}  # 3 puzzles of 1 example, 2 groups
    check_totals("d", _metadata(total_groups=2, total_puzzles=3, mean_puzzle_examples=1.0), arrays)
    # The official Sudoku/maze builders record the group count as total_puzzles.
    check_totals("d", _metadata(total_groups=2, total_puzzles=2, mean_puzzle_examples=1.0), arrays)
    with pytest.raises(DatasetError, match="d/dataset.json: total_groups is 5 but the arrays hold 2"):
        check_totals("d", _metadata(total_groups=5, total_puzzles=3, mean_puzzle_examples=1.0), arrays)
    with pytest.raises(DatasetError, match="total_puzzles is 7 but the arrays hold 3"):
        check_totals("d", _metadata(total_groups=2, total_puzzles=7, mean_puzzle_examples=1.0), arrays)
    with pytest.raises(DatasetError, match="mean_puzzle_examples is 2.0 but the arrays hold 3 examples in 3 puzzles"):
        check_totals("d", _metadata(total_groups=2, total_puzzles=3, mean_puzzle_examples=2.0), arrays)
