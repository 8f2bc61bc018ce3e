"""4x4 Sudoku ("Shidoku") in the official format: learnable in minutes on a CPU by a ~60k-parameter TRM.

Tokens: 0 pad, 1 blank, 2..5 digits 1..4; seq_len 16. Every puzzle has a unique solution and
6-10 blanks. Test puzzles never occur in train (compared by question grid, which for a unique
puzzle is equivalent to solution grid + blank mask), not even as an augmentation.
"""

from __future__ import annotations

import itertools
import os

import numpy as np

from dataset.errors import MissingFileError
from dataset.format import BLANK_IDENTIFIER, write_identifiers, write_split
from dataset.manifest import build_atomically, write_manifest
from dataset.sudoku import apply_symmetries, invalid_rows, random_symmetries, sudoku_arrays

# The only path the generator fills on its own; any other missing path is a typo to report.
QUICKSTART_PATH = "data/quickstart-sudoku4"
NUM_TRAIN_BASE, NUM_AUG, NUM_TEST = 1000, 3, 256
MIN_BLANKS, MAX_BLANKS = 6, 10


def all_shidoku_grids() -> np.ndarray:
    """All 288 solved 4x4 grids [288, 16]: filter every choice of row permutations."""
    perms = np.array(list(itertools.permutations(range(1, 5))), np.uint8)
    rows = np.array(list(itertools.product(range(len(perms)), repeat=4)))
    grids = perms[rows].reshape(-1, 16)
    return np.delete(grids, invalid_rows(np.zeros_like(grids), grids, 2), axis=0)


def _unique_puzzles(rng: np.random.Generator, grids: np.ndarray, count: int) -> np.ndarray:
    """`count` questions [count, 16] whose clues match exactly one solved grid."""
    answers = grids[rng.integers(len(grids), size=count)]
    num_blanks = rng.integers(MIN_BLANKS, MAX_BLANKS + 1, size=(count, 1))
    blanks = np.argsort(rng.random((count, 16)), axis=1) < num_blanks
    matches = np.all((grids[None] == answers[:, None]) | blanks[:, None], axis=2).sum(axis=1)
    return np.where(blanks, 0, answers)[matches == 1]


def _distinct(questions: np.ndarray, exclude: set[bytes]) -> np.ndarray:
    seen, keep = set(exclude), []
    for i, q in enumerate(questions):
        if q.tobytes() not in seen:
            seen.add(q.tobytes())
            keep.append(i)
    return questions[keep]


def _solve(questions: np.ndarray, grids: np.ndarray) -> np.ndarray:
    match = np.all((grids[None] == questions[:, None]) | (questions[:, None] == 0), axis=2)
    return grids[np.argmax(match, axis=1)]


def _build(out_dir: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    grids = all_shidoku_grids()
    test_q = _distinct(_unique_puzzles(rng, grids, 4 * NUM_TEST), set())[:NUM_TEST]
    test_keys = {q.tobytes() for q in test_q}
    base = _distinct(_unique_puzzles(rng, grids, 4 * NUM_TRAIN_BASE), test_keys)[:NUM_TRAIN_BASE]
    groups = np.repeat(base[:, None], NUM_AUG + 1, axis=1)
    groups[:, 1:] = apply_symmetries(
        groups[:, 1:].reshape(-1, 16), random_symmetries(rng, len(base) * NUM_AUG, 2)
    ).reshape(len(base), NUM_AUG, 16)
    keep = np.array([[q.tobytes() not in test_keys for q in g] for g in groups])
    train_q = groups[keep]
    for split, q, group_sizes in (("train", train_q, keep.sum(axis=1)), ("test", test_q, np.ones(len(test_q), int))):
        arrays = sudoku_arrays(q, _solve(q, grids), 1)
        arrays["group_indices"] = np.concatenate([[0], np.cumsum(group_sizes)])
        write_split(
            out_dir, split, {"all": arrays}, pad_id=0, ignore_label_id=0, vocab_size=6, num_puzzle_identifiers=1
        )
    write_identifiers(out_dir, [BLANK_IDENTIFIER])
    write_manifest(out_dir, "quickstart", {"seed": seed})


def build_quickstart_dataset(path: str, *, seed: int = 0) -> None:
    """Build the dataset at `path` (any path: an explicit request) unless a complete one is there."""
    build_atomically(path, lambda staging: _build(staging, seed))


def ensure_quickstart_dataset(path: str, *, seed: int = 0) -> None:
    """Generate the dataset if `path` is QUICKSTART_PATH and does not exist yet. Anything already
    at `path` (or any remote path) is left to the loader to check; a missing path elsewhere is
    more likely a typo than a request, so it is an error, not a new dataset."""
    if "://" in path or os.path.exists(path):
        return
    if os.path.abspath(path) != os.path.abspath(QUICKSTART_PATH):
        raise MissingFileError(
            f"{path}: no such dataset directory; the quick-start generator only fills {QUICKSTART_PATH}: "
            f"check data_paths for a typo, or build the dataset (dataset/build_*.py) into {path}"
        )
    build_quickstart_dataset(path, seed=seed)
