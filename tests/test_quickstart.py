import json
import time

import numpy as np

from dataset.puzzle_dataset import PuzzleDataset
from dataset.quickstart import all_shidoku_grids, ensure_quickstart_dataset
from dataset.sudoku import invalid_rows


def test_all_shidoku_grids():
    grids = all_shidoku_grids()
    assert len(grids) == 288 and len({g.tobytes() for g in grids}) == 288


def test_quickstart_dataset(tmp_path):
    start = time.perf_counter()
    ensure_quickstart_dataset(str(tmp_path / "qs"))
    assert time.perf_counter() - start < 10
    grids = all_shidoku_grids()
    questions = {}
    for split in ("train", "test"):
        meta = json.loads((tmp_path / "qs" / split / "dataset.json").read_text())
        assert (meta["vocab_size"], meta["seq_len"]) == (6, 16)
        q = np.load(tmp_path / "qs" / split / "all__inputs.npy").astype(int) - 1
        a = np.load(tmp_path / "qs" / split / "all__labels.npy").astype(int) - 1
        assert len(invalid_rows(q, a, 2)) == 0
        assert np.all(((q == 0).sum(axis=1) >= 6) & ((q == 0).sum(axis=1) <= 10))
        solutions = np.all((grids[None] == q[:, None]) | (q[:, None] == 0), axis=2).sum(axis=1)
        assert np.all(solutions == 1)
        questions[split] = {row.tobytes() for row in q}
    assert len(questions["test"]) == 256 and len(questions["train"]) > 2000
    assert not questions["train"] & questions["test"]
    PuzzleDataset([str(tmp_path / "qs")], "train")


def test_quickstart_is_idempotent(tmp_path):
    ensure_quickstart_dataset(str(tmp_path / "qs"))
    stamp = (tmp_path / "qs" / "manifest.json").stat().st_mtime_ns
    ensure_quickstart_dataset(str(tmp_path / "qs"))
    assert (tmp_path / "qs" / "manifest.json").stat().st_mtime_ns == stamp
