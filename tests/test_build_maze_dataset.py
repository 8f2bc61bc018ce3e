import json
from collections import deque

import numpy as np
import pytest

from dataset.build_maze_dataset import CHARSET, build, generate, load_split
from dataset.common import DatasetError, dihedral_transform


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
