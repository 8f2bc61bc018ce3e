"""Vectorised Sudoku grid operations for any box size n (grid side N = n*n): 9x9 and 4x4 Shidoku.

Grids hold digits 1..N with 0 for a blank; the dataset token of a digit is digit + 1 (0 = pad).
"""

from __future__ import annotations

import numpy as np

from dataset.errors import DatasetError


def solved_base_grid(n: int) -> np.ndarray:
    """A valid solved grid (the classic shifted pattern); symmetries turn it into many others."""
    side = n * n
    r, c = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    return ((n * (r % n) + r // n + c) % side + 1).astype(np.uint8)


def random_symmetries(rng: np.random.Generator, m: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw `m` validity-preserving symmetries as (digit_map [m, N+1], cell_source [m, N*N]).

    Same distribution as the official builder: digit permutation (blank 0 fixed), transpose with
    probability 1/2, then band + row-in-band and stack + column-in-stack permutations.
    """
    side = n * n
    digit_map = np.concatenate([np.zeros((m, 1), np.int64), np.argsort(rng.random((m, side)), axis=1) + 1], axis=1)
    transpose = rng.random(m) < 0.5
    row_perm = _band_permutation(rng, m, n)
    col_perm = _band_permutation(rng, m, n)
    rows, cols = row_perm[:, :, None], col_perm[:, None, :]
    cell_source = np.where(transpose[:, None, None], cols * side + rows, rows * side + cols)
    return digit_map.astype(np.uint8), cell_source.reshape(m, side * side)


def _band_permutation(rng: np.random.Generator, m: int, n: int) -> np.ndarray:
    bands = np.argsort(rng.random((m, n)), axis=1)
    within = np.argsort(rng.random((m, n, n)), axis=2)
    return (bands[:, :, None] * n + within).reshape(m, n * n)


def apply_symmetries(grids: np.ndarray, symmetries: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Apply one symmetry per row to flattened grids [m, N*N]."""
    digit_map, cell_source = symmetries
    moved = np.take_along_axis(grids, cell_source, axis=1)
    return np.take_along_axis(digit_map, moved, axis=1)


def invalid_rows(questions: np.ndarray, answers: np.ndarray, n: int) -> np.ndarray:
    """Rows whose answer is not a valid solved grid or contradicts a clue of its question."""
    side, m = n * n, len(answers)
    bits = np.left_shift(np.uint16(1), answers.astype(np.uint16)).reshape(m, side, side)
    full = np.uint16(sum(1 << d for d in range(1, side + 1)))
    units = (
        np.bitwise_or.reduce(bits, axis=2),
        np.bitwise_or.reduce(bits, axis=1),
        np.bitwise_or.reduce(np.bitwise_or.reduce(bits.reshape(m, n, n, n, n), axis=4), axis=2).reshape(m, side),
    )
    bad = np.zeros(m, bool)
    for unit in units:
        bad |= np.any(unit != full, axis=1)
    bad |= np.any((questions != 0) & (questions != answers), axis=1)
    return np.flatnonzero(bad)


def check_solutions(questions: np.ndarray, answers: np.ndarray, n: int, *, path: str, lines: np.ndarray) -> None:
    """Every answer a valid solution of its question; `lines[i]` is the file line of row i."""
    bad = invalid_rows(questions, answers, n)
    if len(bad):
        raise DatasetError(
            f"{path} line {lines[bad[0]]}: the answer is not a valid Sudoku solution consistent with the clues "
            f"(and {len(bad) - 1} more rows like it); fix or drop those rows"
        )


def sudoku_arrays(questions: np.ndarray, answers: np.ndarray, group_size: int) -> dict[str, np.ndarray]:
    """Grids [m, N*N] (0 = blank) in the official layout: tokens digit + 1, every example its own
    puzzle (identifier 0), groups of `group_size` consecutive puzzles."""
    m = len(questions)
    return {
        "inputs": questions + 1,
        "labels": answers + 1,
        "puzzle_identifiers": np.zeros(m, np.int32),
        "puzzle_indices": np.arange(m + 1),
        "group_indices": np.arange(0, m + 1, group_size),
    }
