"""30x30 maze generator: randomized DFS with extra openings (so shortest paths matter) + BFS path."""

from __future__ import annotations

from collections import deque

import numpy as np

from dataset.errors import DatasetError
from dataset.rejection_sampling import sample_at_least

SIDE = 30
_INTERIOR = (SIDE - 3) ** 2  # cells the carver may open (rows and columns 1..27); a path is shorter
# ~2 ms per draw: about 20 s of drawing before an unreachable --min-path-length is reported.
MAX_ATTEMPTS = 10_000
WALL, OPEN, START, GOAL, PATH = "#", " ", "S", "G", "o"
_STEPS = ((1, 0), (-1, 0), (0, 1), (0, -1))


def _carve(rng: np.random.Generator, loop_fraction: float) -> np.ndarray:
    """Open-cell mask: a perfect maze on odd coordinates, then a fraction of walls knocked out."""
    open_ = np.zeros((SIDE, SIDE), bool)
    cells = SIDE // 2 - 1  # cells at odd coordinates 1..27, outer wall kept
    stack = [(0, 0)]
    open_[1, 1] = True
    while stack:
        r, c = stack[-1]
        nexts = [
            (r + dr, c + dc)
            for dr, dc in _STEPS
            if 0 <= r + dr < cells and 0 <= c + dc < cells and not open_[2 * (r + dr) + 1, 2 * (c + dc) + 1]
        ]
        if not nexts:
            stack.pop()
            continue
        nr, nc = nexts[rng.integers(len(nexts))]
        open_[r + nr + 1, c + nc + 1] = open_[2 * nr + 1, 2 * nc + 1] = True
        stack.append((nr, nc))
    inner = np.zeros_like(open_)
    inner[1 : 2 * cells, 1 : 2 * cells] = True
    walls = np.argwhere(inner & ~open_)
    knocked = walls[rng.random(len(walls)) < loop_fraction]
    open_[knocked[:, 0], knocked[:, 1]] = True
    return open_


def _bfs(open_: np.ndarray, start: tuple[int, int]) -> tuple[dict, dict]:
    """BFS tree from `start`: (parent, distance) per reachable cell."""
    parent, distance = {start: None}, {start: 0}
    queue = deque([start])
    while queue:
        r, c = queue.popleft()
        for dr, dc in _STEPS:
            nxt = (r + dr, c + dc)
            if open_[nxt] and nxt not in parent:
                parent[nxt], distance[nxt] = (r, c), distance[(r, c)] + 1
                queue.append(nxt)
    return parent, distance


def generate_mazes(
    rng: np.random.Generator,
    count: int,
    min_path_length: int,
    *,
    max_attempts: int = MAX_ATTEMPTS,
    loop_fraction: float = 0.1,
) -> list[tuple[str, str, int]]:
    """`count` (question, answer, shortest path length) with path length >= min_path_length."""
    if not 1 <= min_path_length < _INTERIOR:
        raise DatasetError(
            f"--min-path-length {min_path_length} is impossible: a {SIDE}x{SIDE} maze has paths of 1..{_INTERIOR - 1}"
        )

    def attempt() -> tuple[int, tuple[str, str, int] | None]:
        open_ = _carve(rng, loop_fraction)
        cells = np.argwhere(open_)
        start = tuple(cells[rng.integers(len(cells))])
        parent, distance = _bfs(open_, start)
        far = [cell for cell, d in distance.items() if d >= min_path_length]
        if not far:
            return max(distance.values()), None
        goal = far[rng.integers(len(far))]
        return distance[goal], _render(open_, _path(parent, goal)) + (distance[goal],)

    return sample_at_least(
        attempt,
        count,
        minimum=min_path_length,
        max_attempts=max_attempts,
        what="maze",
        option="--min-path-length",
    )


def _path(parent: dict, cell: tuple[int, int]) -> list[tuple[int, int]]:
    path = [cell]
    while parent[path[-1]] is not None:
        path.append(parent[path[-1]])
    return path[::-1]


def _render(open_: np.ndarray, path: list[tuple[int, int]]) -> tuple[str, str]:
    grid = np.where(open_, OPEN, WALL).astype("<U1")
    grid[path[0]], grid[path[-1]] = START, GOAL
    question = "".join(grid.reshape(-1))
    for cell in path[1:-1]:
        grid[cell] = PATH
    return question, "".join(grid.reshape(-1))
