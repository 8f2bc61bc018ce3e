import json
import subprocess
import sys

import numpy as np
import pytest

from dataset.build_sudoku_dataset import augment_groups, build, generate, load_split, main
from dataset.csv_io import write_csv
from dataset.errors import DatasetError
from dataset.sudoku import invalid_rows
from dataset.sudoku_solver import rating, solve


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("sudoku_src")
    generate(str(path), num_train=3, num_test=2, min_rating=1, seed=7)
    return path


def test_generated_puzzles_are_unique_hard_and_rated(source):
    q, a = load_split(str(source / "train.csv"), None)
    assert len(q) == 3 and len(invalid_rows(q, a, 3)) == 0
    for puzzle, solution in zip(q, a, strict=False):
        result = solve(puzzle, limit=2)
        assert result.count == 1 and np.array_equal(result.solution, solution)
        assert rating(puzzle) >= 1  # needs search beyond singles propagation
        assert 17 <= (puzzle > 0).sum() <= 32


def test_generator_is_deterministic(tmp_path):
    generate(str(tmp_path / "a"), num_train=1, num_test=1, seed=3)
    generate(str(tmp_path / "b"), num_train=1, num_test=1, seed=3)
    assert (tmp_path / "a" / "train.csv").read_text() == (tmp_path / "b" / "train.csv").read_text()


def test_augmentations_preserve_validity_and_clue_structure():
    rng = np.random.default_rng(0)
    q, a = load_split_from_grids(rng)
    q_aug, a_aug = augment_groups(rng, q, a, num_aug=20)
    assert len(invalid_rows(q_aug, a_aug, 3)) == 0
    groups_q = q_aug.reshape(len(q), 21, 81)
    assert np.array_equal(groups_q[:, 0], q)
    assert np.all((groups_q > 0).sum(axis=2) == (q > 0).sum(axis=1, keepdims=True))
    assert len({g.tobytes() for g in groups_q[0]}) > 1


def load_split_from_grids(rng):
    from dataset.sudoku import apply_symmetries, random_symmetries, solved_base_grid

    a = apply_symmetries(np.tile(solved_base_grid(3).reshape(1, 81), (4, 1)), random_symmetries(rng, 4, 3))
    return np.where(rng.random(a.shape) < 0.5, 0, a).astype(np.uint8), a


def test_build_round_trip(source, tmp_path):
    build(str(source), str(tmp_path), num_aug=4, seed=0)
    meta = json.loads((tmp_path / "train" / "dataset.json").read_text())
    assert meta["vocab_size"] == 11 and meta["seq_len"] == 81 and meta["sets"] == ["all"]
    assert meta["total_groups"] == 3 and meta["total_puzzles"] == 15
    inputs = np.load(tmp_path / "train" / "all__inputs.npy")
    labels = np.load(tmp_path / "train" / "all__labels.npy")
    assert inputs.dtype == np.uint8 and inputs.min() >= 1 and labels.min() >= 2
    assert len(invalid_rows(inputs - 1, labels - 1, 3)) == 0
    assert np.array_equal(np.load(tmp_path / "train" / "all__group_indices.npy"), [0, 5, 10, 15])
    q, _ = load_split(str(source / "test.csv"), None)
    assert np.array_equal(np.load(tmp_path / "test" / "all__inputs.npy"), q + 1)  # test: no augmentation
    assert json.loads((tmp_path / "identifiers.json").read_text()) == ["<blank>"]


def test_build_is_deterministic_given_seed(source, tmp_path):
    for name in "ab":
        build(str(source), str(tmp_path / name), num_aug=2, subsample_size=2, seed=1)
    manifests = [json.loads((tmp_path / n / "manifest.json").read_text())["files"] for n in "ab"]
    assert manifests[0] == manifests[1]
    assert np.load(tmp_path / "a" / "train" / "all__inputs.npy").shape == (6, 81)


def test_min_difficulty_filters(source, tmp_path):
    ratings = {
        split: np.loadtxt(source / f"{split}.csv", delimiter=",", skiprows=1, usecols=3, dtype=int, ndmin=1)
        for split in ("train", "test")
    }
    threshold = int(min(r.max() for r in ratings.values()))  # keeps at least one puzzle of each split
    build(str(source), str(tmp_path), min_difficulty=threshold)
    for split, split_ratings in ratings.items():
        kept = json.loads((tmp_path / split / "dataset.json").read_text())["total_puzzles"]
        assert kept == (split_ratings >= threshold).sum()


@pytest.mark.parametrize(
    "row, message",
    [
        ("x,123,456,1", "line 2: expected 4 fields with 81-character"),
        ("x," + "a" * 81 + "," + "1" * 81 + ",1", "line 2: invalid character 'a'"),
        ("x," + "." * 81 + "," + "1" * 81 + ",1", "not a valid Sudoku solution"),
        ("x," + "." * 81 + "," + "1" * 81 + ",hard", "rating 'hard'"),
        ("x," + "." * 81 + "," + "1" * 81 + ",inf", "line 2: rating 'inf' is not a finite number"),
        ("x," + "\u20ac" + "." * 80 + "," + "1" * 81 + ",1", "line 2: invalid character '\u20ac' at position 0"),
    ],
)
def test_malformed_csv_errors_name_file_and_row(tmp_path, row, message):
    for split in ("train", "test"):
        (tmp_path / f"{split}.csv").write_text("source,question,answer,rating\n" + row + "\n")
    with pytest.raises(DatasetError, match=message) as err:
        build(str(tmp_path), str(tmp_path / "out"))
    assert "train.csv" in str(err.value)


def test_missing_or_empty_csv_is_a_clear_error(source, tmp_path):
    write_csv(str(tmp_path / "train.csv"), [], [], [], "x")
    with pytest.raises(DatasetError, match="train.csv: no puzzle rows"):
        build(str(tmp_path), str(tmp_path / "out"))
    (tmp_path / "train.csv").write_text((source / "train.csv").read_text())
    with pytest.raises(DatasetError, match="test.csv: file not found"):
        build(str(tmp_path), str(tmp_path / "out"))


def test_build_from_gs_source(source, tmp_path, gcs_emulator):
    import gcsfs

    remote = f"{gcs_emulator['bucket']}/sudoku-csv"
    fs = gcsfs.GCSFileSystem(token="anon")
    for split in ("train", "test"):
        fs.put_file(str(source / f"{split}.csv"), f"{remote}/{split}.csv")
    build(f"gs://{remote}", str(tmp_path / "gs"), seed=0)
    build(str(source), str(tmp_path / "local"), seed=0)
    for split in ("train", "test"):
        assert np.array_equal(
            np.load(tmp_path / "gs" / split / "all__inputs.npy"),
            np.load(tmp_path / "local" / split / "all__inputs.npy"),
        )


def test_cli_help():
    for args in ([], ["generate"]):
        out = subprocess.run(
            [sys.executable, "dataset/build_sudoku_dataset.py", *args, "--help"],
            capture_output=True,
            text=True,
            check=True,
            cwd=_repo_root(),
        )
        assert "--output-dir" in out.stdout


def _repo_root():
    import pathlib

    return pathlib.Path(__file__).resolve().parents[1]


def test_invalid_solution_names_the_csv_line_not_an_augmented_index(source, tmp_path):
    rows = (source / "train.csv").read_text().splitlines()
    _, question, answer, rating = rows[1].split(",")
    wrong = answer[1] + answer[0] + answer[2:]  # swapping two cells breaks a row and a clue
    (tmp_path / "train.csv").write_text("\n".join([*rows, f"x,{question},{wrong},{rating}"]) + "\n")
    (tmp_path / "test.csv").write_text((source / "test.csv").read_text())
    with pytest.raises(DatasetError, match=r"train.csv line 5: the answer is not a valid Sudoku solution"):
        build(str(tmp_path), str(tmp_path / "out"), subsample_size=2, num_aug=3, seed=0)
    assert not (tmp_path / "out").exists()


def test_bom_is_named(source, tmp_path):
    for split in ("train", "test"):
        (tmp_path / f"{split}.csv").write_text("\ufeff" + (source / f"{split}.csv").read_text(), encoding="utf-8")
    with pytest.raises(DatasetError, match="train.csv: starts with a UTF-8 byte-order mark"):
        build(str(tmp_path), str(tmp_path / "out"))


def test_min_difficulty_that_keeps_nothing_is_an_error(source, tmp_path):
    ratings = np.loadtxt(source / "train.csv", delimiter=",", skiprows=1, usecols=3, dtype=int)
    too_hard = int(ratings.max()) + 1
    with pytest.raises(DatasetError, match=f"no puzzle has rating >= --min-difficulty {too_hard} .ratings"):
        build(str(source), str(tmp_path / "out"), min_difficulty=too_hard)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--subsample-size", "-1", "must be >= 1"),
        ("--subsample-size", "0", "must be >= 1"),
        ("--num-aug", "-2", ">= 0"),
    ],
)
def test_cli_rejects_negative_sizes(source, tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["--source", str(source), "--output-dir", str(tmp_path / "out"), flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and message in err
    assert not (tmp_path / "out").exists()


@pytest.mark.timeout(60)
def test_unreachable_min_rating_fails_with_the_ratings_seen(tmp_path):
    with pytest.raises(DatasetError, match=r"no puzzle reached --min-rating 100000 in 4 draws in a row") as err:
        generate(str(tmp_path), num_train=1, num_test=1, min_rating=100_000, max_attempts=4, seed=0)
    seen_max = int(str(err.value).split("scored ")[1].split("..")[1].split(":")[0])
    assert f"use --min-rating <= {seen_max}" in str(err.value) and seen_max < 100_000
    assert not (tmp_path / "train.csv").exists()
