"""A tiny 9x9-Sudoku-format dataset for smoke runs: valid but not necessarily unique puzzles."""

from __future__ import annotations

import numpy as np

from dataset.format import BLANK_IDENTIFIER, write_identifiers, write_split
from dataset.manifest import write_manifest
from dataset.sudoku import apply_symmetries, random_symmetries, solved_base_grid, sudoku_arrays


def _random_puzzles(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    base = np.broadcast_to(solved_base_grid(3).reshape(1, 81), (count, 81))
    answers = apply_symmetries(base, random_symmetries(rng, count, 3))
    blanks = rng.random((count, 81)) < rng.uniform(0.3, 0.7, (count, 1))
    return np.where(blanks, 0, answers).astype(np.uint8), answers


def build_smoke_dataset(out_dir: str, num_puzzles: int, seed: int) -> str:
    """Write `num_puzzles` train and max(1, num_puzzles // 2) test puzzles to `out_dir`; returns it."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_puzzles), ("test", max(1, num_puzzles // 2))):
        q, a = _random_puzzles(rng, count)
        write_split(
            out_dir,
            split,
            {"all": sudoku_arrays(q, a, 1)},
            pad_id=0,
            ignore_label_id=0,
            vocab_size=11,
            num_puzzle_identifiers=1,
        )
    write_identifiers(out_dir, [BLANK_IDENTIFIER])
    write_manifest(out_dir, "smoke", {"num_puzzles": num_puzzles, "seed": seed})
    return out_dir
