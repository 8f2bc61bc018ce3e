"""Build the Maze-Hard dataset (official TRM format) from CSVs, or generate such CSVs offline.

    python dataset/build_maze_dataset.py --source DIR --output-dir OUT [--subsample-size N] [--aug] [--seed S]
    python dataset/build_maze_dataset.py generate --output-dir DIR --num-train N --num-test M
        [--min-path-length L] [--max-attempts A] [--seed S]

30x30 grids flattened to 900 characters of "# SGo" (wall, open, start, goal, path); token = index + 1.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from dataset.cli import builder_parsers, parse_builder_args, positive_int, run_cli
from dataset.csv_io import PuzzleCsv, chars_to_codes, read_puzzle_csv, write_csv
from dataset.errors import DatasetError
from dataset.format import BLANK_IDENTIFIER, write_identifiers, write_split
from dataset.manifest import write_manifest
from dataset.maze import MAX_ATTEMPTS, SIDE, generate_mazes
from dataset.transforms import dihedral_transform

CHARSET = "# SGo"
_TOKENS = np.full(256, -1, np.int16)
_TOKENS[[ord(ch) for ch in CHARSET]] = np.arange(1, len(CHARSET) + 1)
_OPEN, _START, _GOAL, _PATH = (CHARSET.index(ch) + 1 for ch in " SGo")


def load_split(path: str) -> tuple[np.ndarray, np.ndarray]:
    rows = read_puzzle_csv(path, SIDE * SIDE)
    q = chars_to_codes(rows.questions, _TOKENS, csv_file=rows, what="question")
    a = chars_to_codes(rows.answers, _TOKENS, csv_file=rows, what="answer")
    _check_mazes(q, a, rows)
    return q, a


def _check_mazes(q: np.ndarray, a: np.ndarray, rows: PuzzleCsv) -> None:
    """One S and one G per maze; the answer only turns open cells into path cells."""
    bad = ((q == _START).sum(1) != 1) | ((q == _GOAL).sum(1) != 1) | (q == _PATH).any(1)
    bad |= np.any((q != a) & ~((q == _OPEN) & (a == _PATH)), axis=1)
    if bad.any():
        raise DatasetError(
            f"{rows.path} line {rows.lines[np.argmax(bad)]}: invalid maze (needs one S and one G, and the "
            "answer may only mark open cells with 'o'); fix or drop the row"
        )


def build(source: str, output_dir: str, *, subsample_size: int | None = None, aug: bool = False, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        q, a = load_split(f"{source.rstrip('/')}/{split}.csv")
        if split == "train" and subsample_size is not None and subsample_size < len(q):
            keep = rng.choice(len(q), subsample_size, replace=False)
            q, a = q[keep], a[keep]
        versions = 8 if aug and split == "train" else 1
        grids = [
            np.stack([dihedral_transform(x.reshape(-1, SIDE, SIDE), t) for t in range(versions)], 1) for x in (q, a)
        ]
        q, a = (g.reshape(-1, SIDE * SIDE) for g in grids)
        m = len(q)
        arrays = {
            "inputs": q,
            "labels": a,
            "puzzle_identifiers": np.zeros(m, np.int32),
            "puzzle_indices": np.arange(m + 1),
            "group_indices": np.arange(0, m + 1, versions),
        }
        write_split(
            output_dir,
            split,
            {"all": arrays},
            pad_id=0,
            ignore_label_id=0,
            vocab_size=len(CHARSET) + 1,
            num_puzzle_identifiers=1,
        )
    write_identifiers(output_dir, [BLANK_IDENTIFIER])
    write_manifest(
        output_dir, "build_maze_dataset", dict(source=source, subsample_size=subsample_size, aug=aug, seed=seed)
    )


def generate(
    output_dir: str,
    *,
    num_train: int,
    num_test: int,
    min_path_length: int = 110,
    max_attempts: int = MAX_ATTEMPTS,
    seed: int = 0,
) -> None:
    """Write train.csv/test.csv of mazes whose BFS shortest S->G path has >= min_path_length steps."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_train), ("test", num_test)):
        mazes = generate_mazes(rng, count, min_path_length, max_attempts=max_attempts)
        write_csv(
            f"{output_dir}/{split}.csv",
            [m[0] for m in mazes],
            [m[1] for m in mazes],
            [m[2] for m in mazes],
            "generated",
        )


def _parse(argv: list[str]) -> argparse.Namespace:
    build, gen = builder_parsers("build_maze_dataset.py", __doc__, generate.__doc__)
    build.add_argument("--aug", action="store_true", help="add the 8 dihedral transforms of each training maze")
    gen.add_argument(
        "--min-path-length", type=positive_int, default=110, help="the 'hard' filter (Maze-Hard uses > 110)"
    )
    gen.add_argument(
        "--max-attempts",
        type=positive_int,
        default=MAX_ATTEMPTS,
        help="give up after this many rejected mazes in a row (about 2 ms each)",
    )
    return parse_builder_args(argv, build, gen)


def main(argv: list[str] | None = None) -> None:
    run_cli(_parse(sys.argv[1:] if argv is None else argv), {"build": build, "generate": generate})


if __name__ == "__main__":
    main()
