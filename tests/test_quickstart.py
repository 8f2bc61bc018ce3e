import json
import time

import numpy as np
import pytest

from dataset.errors import DatasetError
from dataset.puzzle_dataset import PuzzleDataset
from dataset.quickstart import QUICKSTART_PATH, all_shidoku_grids, build_quickstart_dataset, ensure_quickstart_dataset
from dataset.sudoku import invalid_rows


def test_all_shidoku_grids():
    grids = all_shidoku_grids()
    assert len(grids) == 288 and len({g.tobytes() for g in grids}) == 288


def test_quickstart_dataset(tmp_path):
    start = time.perf_counter()
    build_quickstart_dataset(str(tmp_path / "qs"))
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
    build_quickstart_dataset(str(tmp_path / "qs"))
    stamp = (tmp_path / "qs" / "manifest.json").stat().st_mtime_ns
    build_quickstart_dataset(str(tmp_path / "qs"))
    ensure_quickstart_dataset(str(tmp_path / "qs"))  # complete: accepted wherever it is
    assert (tmp_path / "qs" / "manifest.json").stat().st_mtime_ns == stamp


def test_ensure_fills_only_the_default_path(tmp_path, monkeypatch):
    typo = tmp_path / "data" / "quickstart-sudoku5"
    with pytest.raises(
        DatasetError, match=f"{typo}: no such dataset directory; .*only fills {QUICKSTART_PATH}: check data_paths"
    ):
        ensure_quickstart_dataset(str(typo))
    assert not (tmp_path / "data").exists()
    (tmp_path / "elsewhere").mkdir()
    ensure_quickstart_dataset(str(tmp_path / "elsewhere"))  # existing: the loader checks what is there
    ensure_quickstart_dataset("gs://bucket/quickstart")  # remote: never generated
    assert list((tmp_path / "elsewhere").iterdir()) == []
    monkeypatch.chdir(tmp_path)
    ensure_quickstart_dataset(QUICKSTART_PATH)
    ensure_quickstart_dataset(str(tmp_path / QUICKSTART_PATH))  # the same directory, spelled absolutely
    assert (tmp_path / QUICKSTART_PATH / "manifest.json").exists()
