import time

import numpy as np

from dataset.puzzle_dataset import PuzzleDataset, TrainSampler
from dataset.smoke import build_smoke_dataset
from dataset.sudoku import invalid_rows


def test_smoke_dataset_is_valid_and_fast(tmp_path):
    start = time.perf_counter()
    out = build_smoke_dataset(str(tmp_path / "smoke"), num_puzzles=32, seed=0)
    assert time.perf_counter() - start < 2
    for split in ("train", "test"):
        ds = PuzzleDataset([out], split)
        assert (ds.metadata.seq_len, ds.metadata.vocab_size) == (81, 11)
        q = np.load(tmp_path / "smoke" / split / "all__inputs.npy").astype(int) - 1
        a = np.load(tmp_path / "smoke" / split / "all__labels.npy").astype(int) - 1
        assert len(invalid_rows(q, a, 3)) == 0
    batch = TrainSampler(PuzzleDataset([out], "train"), 8, seed=0, process_index=0, process_count=1).next_batch()
    assert batch["inputs"].shape == (8, 81)
