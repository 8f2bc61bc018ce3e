"""9x9 Sudoku solver (bitmask propagation + backtracking) and unique-solution puzzle generator.

The difficulty rating of a puzzle is the number of branching nodes the solver needs to find all
solutions (up to 2) after naked/hidden-single propagation: 0 means propagation alone solves it;
Sudoku-Extreme-like puzzles need search, so the generator keeps only puzzles rated >= min_rating.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dataset.rejection_sampling import sample_at_least

# ~40 ms per draw: about 40 s of drawing before an unreachable --min-rating is reported.
MAX_ATTEMPTS = 1_000
FULL = 0x1FF  # bit d-1 set = digit d still possible
_ROW = [c // 9 for c in range(81)]
_COL = [9 + c % 9 for c in range(81)]
_BOX = [18 + (c // 27) * 3 + (c % 9) // 3 for c in range(81)]
_UNITS = [[c for c in range(81) if u in (_ROW[c], _COL[c], _BOX[c])] for u in range(27)]
_POPCOUNT = [bin(m).count("1") for m in range(FULL + 1)]


@dataclass
class _Search:
    limit: int
    rng: np.random.Generator | None
    nodes: int = 0
    count: int = 0
    solution: list[int] | None = None


def _candidates(vals: list[int], used: list[int], c: int) -> int:
    return FULL & ~(used[_ROW[c]] | used[_COL[c]] | used[_BOX[c]])


def _place(vals: list[int], used: list[int], c: int, bit: int) -> None:
    vals[c] = bit.bit_length()
    used[_ROW[c]] |= bit
    used[_COL[c]] |= bit
    used[_BOX[c]] |= bit


def _propagate(vals: list[int], used: list[int]) -> bool:
    """Fill naked and hidden singles until stuck; False on contradiction."""
    changed = True
    while changed:
        changed = False
        for c in range(81):
            if not vals[c]:
                m = _candidates(vals, used, c)
                if not m:
                    return False
                if not m & (m - 1):
                    _place(vals, used, c, m)
                    changed = True
        for u, cells in enumerate(_UNITS):
            once = twice = 0
            for c in cells:
                if not vals[c]:
                    m = _candidates(vals, used, c)
                    twice |= once & m
                    once |= m
            if FULL & ~used[u] & ~once:
                return False  # a missing digit has no cell left in this unit
            singles = once & ~twice
            for c in cells:
                m = 0 if vals[c] else _candidates(vals, used, c) & singles
                if m & (m - 1):
                    return False
                if m:
                    _place(vals, used, c, m)
                    changed = True
    return True


def _search(vals: list[int], used: list[int], s: _Search) -> None:
    if not _propagate(vals, used):
        return
    best, best_mask, best_count = -1, 0, 10
    for c in range(81):
        if not vals[c]:
            m = _candidates(vals, used, c)
            if _POPCOUNT[m] < best_count:
                best, best_mask, best_count = c, m, _POPCOUNT[m]
                if best_count == 2:
                    break
    if best < 0:
        s.count += 1
        s.solution = vals
        return
    s.nodes += 1
    bits = [1 << d for d in range(9) if best_mask >> d & 1]
    if s.rng is not None:
        bits = [bits[i] for i in s.rng.permutation(len(bits))]
    for bit in bits:
        child_vals, child_used = vals[:], used[:]
        _place(child_vals, child_used, best, bit)
        _search(child_vals, child_used, s)
        if s.count >= s.limit:
            return


def solve(grid: np.ndarray, limit: int = 2, rng: np.random.Generator | None = None) -> _Search:
    """Search `grid` (81 digits, 0 = blank) for up to `limit` solutions; rng randomises guesses."""
    vals, used = [0] * 81, [0] * 27
    for c, d in enumerate(np.asarray(grid).reshape(81).tolist()):
        if d:
            bit = 1 << (d - 1)
            if not _candidates(vals, used, c) & bit:
                return _Search(limit, rng)  # clues already clash: no solution
            _place(vals, used, c, bit)
    s = _Search(limit, rng)
    _search(vals, used, s)
    return s


def rating(puzzle: np.ndarray) -> int:
    """Branching nodes needed to solve and prove uniqueness (deterministic guess order)."""
    return solve(puzzle, limit=2).nodes


def generate_puzzle(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random minimal unique-solution puzzle: remove clues in random order while unique."""
    solution = np.asarray(solve(np.zeros(81, np.uint8), limit=1, rng=rng).solution, np.uint8)
    puzzle = solution.copy()
    for c in rng.permutation(81):
        kept = puzzle[c]
        puzzle[c] = 0
        if solve(puzzle, limit=2).count != 1:
            puzzle[c] = kept
    return puzzle, solution


def generate_puzzles(
    rng: np.random.Generator, count: int, min_rating: int, *, max_attempts: int = MAX_ATTEMPTS
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """`count` (puzzle, solution, rating) triples with rating >= min_rating."""

    def attempt() -> tuple[int, tuple[np.ndarray, np.ndarray, int] | None]:
        puzzle, solution = generate_puzzle(rng)
        r = rating(puzzle)
        return r, (puzzle, solution, r) if r >= min_rating else None

    return sample_at_least(
        attempt, count, minimum=min_rating, max_attempts=max_attempts, what="puzzle", option="--min-rating"
    )
