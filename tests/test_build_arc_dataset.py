import json

import numpy as np
import pytest

from dataset.arc_grids import augment, augmentation_name, crop, parse_augmentation, to_sequences
from dataset.build_arc_dataset import main
from tests.arc_fixtures import write_tiny_arc


@pytest.fixture(scope="module")
def arc_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("arc")
    write_tiny_arc(str(root / "arc"))
    main(
        [
            "--input-file-prefix",
            str(root / "arc"),
            "--output-dir",
            str(root / "out"),
            "--subsets",
            "training",
            "evaluation",
            "--test-set-name",
            "evaluation",
            "--num-aug",
            "3",
            "--seed",
            "0",
        ]
    )
    return root


def _load(root, split):
    return {
        f: np.load(root / "out" / split / f"all__{f}.npy")
        for f in ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")
    }


@pytest.mark.parametrize("tid", range(8))
def test_augmentation_is_invertible(tid):
    rng = np.random.default_rng(tid)
    grid = rng.integers(0, 10, (3, 5)).astype(np.uint8)
    colours = np.concatenate([[0], rng.permutation(np.arange(1, 10))]).astype(np.uint8)
    task, invert = parse_augmentation(augmentation_name("abc", tid, colours))
    assert task == "abc"
    assert np.array_equal(invert(augment(grid, tid, colours)), grid)
    assert np.all((augment(grid, tid, colours) == 0) == (dihedral_zero_mask(grid, tid)))


def dihedral_zero_mask(grid, tid):
    from dataset.common import dihedral_transform

    return dihedral_transform(grid == 0, tid)


def test_crop_recovers_grid_from_canvas():
    grid = np.random.default_rng(0).integers(0, 10, (4, 7)).astype(np.uint8)
    seq, _ = to_sequences(grid, grid, (0, 0))
    assert np.array_equal(crop(seq), grid)
    full = np.zeros((30, 30), np.uint8)
    assert np.array_equal(crop(to_sequences(full, full, (0, 0))[0]), full)


def test_metadata_and_groups(arc_dir):
    ids = json.loads((arc_dir / "out" / "identifiers.json").read_text())
    assert ids[0] == "<blank>" and len(ids) == len(set(ids))
    test_tasks = json.loads((arc_dir / "out" / "test_puzzles.json").read_text())
    assert len(test_tasks) == 2 and all("output" in p for t in test_tasks.values() for p in t["test"])
    for split, groups in (("train", 5), ("test", 2)):
        meta = json.loads((arc_dir / "out" / split / "dataset.json").read_text())
        assert (meta["seq_len"], meta["vocab_size"], meta["total_groups"]) == (900, 12, groups)
        assert meta["total_puzzles"] == 4 * groups  # task + 3 distinct augmentations
        assert meta["num_puzzle_identifiers"] == len(ids)
    test_ids = set(_load(arc_dir, "test")["puzzle_identifiers"])
    assert test_ids <= set(_load(arc_dir, "train")["puzzle_identifiers"])  # test versions have demonstrations


def test_test_split_inverts_to_original_pairs(arc_dir):
    ids = json.loads((arc_dir / "out" / "identifiers.json").read_text())
    tasks = json.loads((arc_dir / "out" / "test_puzzles.json").read_text())
    arrays = _load(arc_dir, "test")
    puzzle_of = np.searchsorted(arrays["puzzle_indices"], np.arange(len(arrays["inputs"])), side="right") - 1
    for row, puzzle in enumerate(puzzle_of):
        task, invert = parse_augmentation(ids[arrays["puzzle_identifiers"][puzzle]])
        pair = (invert(crop(arrays["inputs"][row])).tolist(), invert(crop(arrays["labels"][row])).tolist())
        assert pair in [(p["input"], p["output"]) for p in tasks[task]["test"]]


def test_train_split_is_translated_and_eos_bordered(arc_dir):
    arrays = _load(arc_dir, "train")
    canvases = arrays["inputs"].reshape(-1, 30, 30)
    top_left_colour = canvases[:, 0, 0] >= 2
    assert top_left_colour.sum() >= len(arrays["puzzle_identifiers"])  # one untranslated example per puzzle
    assert (~top_left_colour).any()
    assert set(np.unique(arrays["inputs"])) <= set(range(12)) and (arrays["inputs"] == 1).any()


def test_missing_input_file_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="challenges.json not found"):
        main(
            [
                "--input-file-prefix",
                str(tmp_path / "none"),
                "--output-dir",
                str(tmp_path / "o"),
                "--subsets",
                "training",
            ]
        )
