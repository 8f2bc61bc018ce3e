import json
from collections import deque

import numpy as np
import pytest

from dataset.build_maze_dataset import CHARSET, build, generate, load_split, main
from dataset.errors import DatasetError
from dataset.transforms import dihedral_transform


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("maze_src")
    generate(str(path), num_train=2, num_test=1, min_path_length=60, seed=0)
    return path


def _shortest(grid):
    start, goal = (tuple(np.argwhere(grid == ch)[0]) for ch in "SG")
    dist, queue = {start: 0}, deque([start])
    while queue:
        r, c = queue.popleft()
        for nxt in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if grid[nxt] != "#" and nxt not in dist:
                dist[nxt] = dist[(r, c)] + 1
                queue.append(nxt)
    return dist[goal]


def test_generated_labels_are_shortest_connected_paths(source):
    rows = (source / "train.csv").read_text().splitlines()[1:]
    for row in rows:
        _, q, a, rating = row.split(",")
        grid_q, grid_a = (np.array(list(x)).reshape(30, 30) for x in (q, a))
        length = _shortest(grid_q)
        assert length == int(rating) >= 60
        assert (grid_a == "o").sum() == length - 1  # path cells between S and G
        on_path = np.isin(grid_a, list("SGo"))
        assert _shortest(np.where(on_path, grid_a, "#")) == length  # the marked cells connect S to G


def test_build_round_trip_with_dihedral_augmentation(source, tmp_path):
    build(str(source), str(tmp_path), aug=True, seed=0)
    meta = json.loads((tmp_path / "train" / "dataset.json").read_text())
    assert (meta["vocab_size"], meta["seq_len"], meta["total_groups"], meta["total_puzzles"]) == (6, 900, 2, 16)
    inputs = np.load(tmp_path / "train" / "all__inputs.npy")
    q, _ = load_split(str(source / "train.csv"))
    for t in range(8):
        assert np.array_equal(inputs[t].reshape(30, 30), dihedral_transform(q[0].reshape(30, 30), t))
    assert json.loads((tmp_path / "test" / "dataset.json").read_text())["total_puzzles"] == 1
    assert inputs.min() >= 1 and inputs.max() <= len(CHARSET)


def test_invalid_maze_row_is_reported(source, tmp_path):
    row = (source / "train.csv").read_text().splitlines()[1].replace("S", " ")
    for split in ("train", "test"):
        (tmp_path / f"{split}.csv").write_text("source,question,answer,rating\n" + row + "\n")
    with pytest.raises(DatasetError, match="train.csv line 2: invalid maze"):
        build(str(tmp_path), str(tmp_path / "out"))


@pytest.mark.timeout(60)
def test_unreachable_min_path_length_fails_with_the_lengths_seen(tmp_path):
    with pytest.raises(DatasetError, match=r"no maze reached --min-path-length 600 in 20 draws in a row") as err:
        generate(str(tmp_path), num_train=1, num_test=1, min_path_length=600, max_attempts=20, seed=0)
    longest = int(str(err.value).split("scored ")[1].split("..")[1].split(":")[0])
    assert 0 < longest < 600 and f"use --min-path-length <= {longest}" in str(err.value)
    assert not (tmp_path / "train.csv").exists()


@pytest.mark.parametrize("length", [0, 729])
def test_impossible_min_path_length_fails_at_once(tmp_path, length):
    with pytest.raises(DatasetError, match=rf"--min-path-length {length} is impossible: .* paths of 1..728"):
        generate(str(tmp_path), num_train=1, num_test=1, min_path_length=length)


def test_cli_rejects_non_positive_subsample_size(source, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--source", str(source), "--output-dir", str(tmp_path / "out"), "--subsample-size", "-3"])
    assert exit_info.value.code == 2 and "--subsample-size: -3 is out of range: must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_invalid_maze_row_is_reported_by_csv_line(source, tmp_path):
    rows = (source / "train.csv").read_text().splitlines()
    broken = rows[1].replace("S", " ")
    (tmp_path / "train.csv").write_text("\n".join([rows[0], rows[1], "", broken]) + "\n")
    (tmp_path / "test.csv").write_text((source / "test.csv").read_text())
    with pytest.raises(DatasetError, match="train.csv line 4: invalid maze"):
        build(str(tmp_path), str(tmp_path / "out"))
