import json
from pathlib import Path

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
    from dataset.transforms import dihedral_transform

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
    with pytest.raises(SystemExit, match="none_training_challenges.json not found"):
        main(_argv(tmp_path / "none", tmp_path / "o"))


def _argv(prefix, out, *extra):
    return [
        "--input-file-prefix",
        str(prefix),
        "--output-dir",
        str(out),
        "--subsets",
        "training",
        "evaluation",
        "--test-set-name",
        "evaluation",
        "--num-aug",
        "1",
        *extra,
    ]


def _edit_challenges(prefix, subset, edit):
    path = Path(f"{prefix}_{subset}_challenges.json")
    tasks = json.loads(path.read_text())
    edit(tasks[sorted(tasks)[0]])
    path.write_text(json.dumps(tasks))


@pytest.mark.parametrize("subset", ["training", "evaluation"])
def test_missing_solutions_file_is_an_error(tmp_path, subset):
    prefix = tmp_path / "arc"
    write_tiny_arc(str(prefix))
    Path(f"{prefix}_{subset}_solutions.json").unlink()
    with pytest.raises(SystemExit, match=f"arc_{subset}_solutions.json not found; the test outputs are needed") as err:
        main(_argv(prefix, tmp_path / "out"))
    assert err.value.code != 0 and "--hidden-test-solutions" in str(err.value)


def test_hidden_test_solutions_builds_with_unknown_outputs(tmp_path):
    prefix = tmp_path / "arc"
    write_tiny_arc(str(prefix))
    Path(f"{prefix}_evaluation_solutions.json").unlink()
    main(_argv(prefix, tmp_path / "out", "--hidden-test-solutions"))
    test_tasks = json.loads((tmp_path / "out" / "test_puzzles.json").read_text())
    assert all(pair["output"] == [[0]] for task in test_tasks.values() for pair in task["test"])
    Path(f"{prefix}_training_solutions.json").unlink()  # training answers are training material: never unknown
    with pytest.raises(SystemExit, match="arc_training_solutions.json not found"):
        main(_argv(prefix, tmp_path / "out2", "--hidden-test-solutions"))


def test_solutions_file_without_the_task_is_an_error(tmp_path):
    prefix = tmp_path / "arc"
    write_tiny_arc(str(prefix))
    solutions = Path(f"{prefix}_evaluation_solutions.json")
    first = sorted(json.loads(solutions.read_text()))[0]
    solutions.write_text(json.dumps({k: v for k, v in json.loads(solutions.read_text()).items() if k != first}))
    with pytest.raises(SystemExit, match=f"evaluation_solutions.json: no solution for test input 0 of task {first}"):
        main(_argv(prefix, tmp_path / "out"))


def _set_cell(value):
    def edit(task):
        task["train"][0]["input"][0][0] = value

    return edit


def _ragged(task):
    task["train"][0]["input"][0].append(1)


def _no_output(task):
    del task["train"][0]["output"]


def _no_test(task):
    del task["test"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set_cell(1.7), r"train pair 0 input: cell 1.7 at row 0, column 0; expected 1..30 rows"),
        (_set_cell(True), r"train pair 0 input: cell True at row 0, column 0"),
        (_set_cell(10), r"train pair 0 input: cell 10 at row 0, column 0"),
        (_set_cell("3"), r"train pair 0 input: cell '3' at row 0, column 0"),
        (_ragged, r"train pair 0 input: rows of different lengths"),
        (_no_output, r"train pair 0 has no 'output'"),
        (_no_test, r'expected an object with "train" and "test" lists of pairs'),
    ],
)
def test_malformed_task_names_file_task_and_cell(tmp_path, edit, message):
    prefix = tmp_path / "arc"
    write_tiny_arc(str(prefix))
    _edit_challenges(prefix, "training", edit)
    with pytest.raises(SystemExit, match="arc_training_challenges.json task [0-9a-f]+:? .*" + message):
        main(_argv(prefix, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_truncated_json_names_the_file(tmp_path):
    prefix = tmp_path / "arc"
    write_tiny_arc(str(prefix))
    path = Path(f"{prefix}_training_challenges.json")
    path.write_text(path.read_text()[:-100])
    with pytest.raises(SystemExit, match="arc_training_challenges.json: not valid JSON .* may be truncated"):
        main(_argv(prefix, tmp_path / "out"))


def test_test_set_outside_the_subsets_is_an_error_not_an_empty_split(tmp_path):
    prefix = tmp_path / "arc"
    write_tiny_arc(str(prefix))
    argv = _argv(prefix, tmp_path / "out")
    argv[argv.index("--test-set-name") + 1] = "evaluation2"
    with pytest.raises(SystemExit, match="--test-set-name 'evaluation2' is not among --subsets"):
        main(argv)
    assert not (tmp_path / "out").exists()


def test_negative_num_aug_is_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(_argv(tmp_path / "arc", tmp_path / "out", "--num-aug", "-1"))
    assert err.value.code == 2 and "--num-aug: -1 is out of range: must be >= 0" in capsys.readouterr().err
