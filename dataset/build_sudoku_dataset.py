"""Build the 9x9 Sudoku dataset (official TRM format) from CSVs, or generate such CSVs offline.

    python dataset/build_sudoku_dataset.py --source DIR --output-dir OUT [--subsample-size N]
        [--num-aug K] [--min-difficulty R] [--seed S]
    python dataset/build_sudoku_dataset.py generate --output-dir DIR --num-train N --num-test M
        [--min-rating R] [--max-attempts A] [--seed S]

DIR holds train.csv/test.csv (`source,question,answer,rating`, '.' = blank); it may be a gs:// prefix.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from dataset.cli import builder_parsers, non_negative_int, parse_builder_args, positive_int, run_cli
from dataset.csv_io import chars_to_codes, read_puzzle_csv, write_csv
from dataset.errors import DatasetError
from dataset.format import BLANK_IDENTIFIER, write_identifiers, write_split
from dataset.manifest import write_manifest
from dataset.sudoku import apply_symmetries, check_solutions, random_symmetries, sudoku_arrays
from dataset.sudoku_solver import MAX_ATTEMPTS, generate_puzzles

_DIGITS = np.full(256, -1, np.int16)
_DIGITS[ord(".")] = 0
_DIGITS[ord("1") : ord("9") + 1] = np.arange(1, 10)


def load_split(path: str, min_difficulty: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Read one CSV as (questions, answers) uint8 digit arrays [N, 81], 0 = blank; every answer is
    checked to solve its question (errors name the CSV line)."""
    rows = read_puzzle_csv(path, 81)
    if min_difficulty is not None:
        keep = rows.ratings >= min_difficulty
        if not keep.any():
            raise DatasetError(
                f"{path}: no puzzle has rating >= --min-difficulty {min_difficulty} "
                f"(ratings {rows.ratings.min()}..{rows.ratings.max()}); lower it"
            )
        rows = rows.select(keep)
    q = chars_to_codes(rows.questions, _DIGITS, csv_file=rows, what="question")
    a = chars_to_codes(rows.answers, _DIGITS, csv_file=rows, what="answer")
    check_solutions(q, a, 3, path=path, lines=rows.lines)
    return q, a


def augment_groups(
    rng: np.random.Generator, q: np.ndarray, a: np.ndarray, num_aug: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each puzzle followed by `num_aug` random symmetric copies, group-major: [N * (num_aug + 1), 81]."""
    n = len(q)
    q_out = np.repeat(q[:, None], num_aug + 1, axis=1)
    a_out = np.repeat(a[:, None], num_aug + 1, axis=1)
    if num_aug:
        sym = random_symmetries(rng, n * num_aug, 3)
        q_out[:, 1:] = apply_symmetries(q_out[:, 1:].reshape(-1, 81), sym).reshape(n, num_aug, 81)
        a_out[:, 1:] = apply_symmetries(a_out[:, 1:].reshape(-1, 81), sym).reshape(n, num_aug, 81)
    return q_out.reshape(-1, 81), a_out.reshape(-1, 81)


def build(
    source: str,
    output_dir: str,
    *,
    subsample_size: int | None = None,
    num_aug: int = 0,
    min_difficulty: int | None = None,
    seed: int = 0,
) -> None:
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        q, a = load_split(f"{source.rstrip('/')}/{split}.csv", min_difficulty)
        if split == "train" and subsample_size is not None and subsample_size < len(q):
            keep = rng.choice(len(q), subsample_size, replace=False)
            q, a = q[keep], a[keep]
        aug = num_aug if split == "train" else 0
        q, a = augment_groups(rng, q, a, aug)  # symmetries keep every solution valid
        write_split(
            output_dir,
            split,
            {"all": sudoku_arrays(q, a, aug + 1)},
            pad_id=0,
            ignore_label_id=0,
            vocab_size=11,
            num_puzzle_identifiers=1,
        )
    write_identifiers(output_dir, [BLANK_IDENTIFIER])
    write_manifest(
        output_dir,
        "build_sudoku_dataset",
        dict(source=source, subsample_size=subsample_size, num_aug=num_aug, min_difficulty=min_difficulty, seed=seed),
    )


def generate(
    output_dir: str,
    *,
    num_train: int,
    num_test: int,
    min_rating: int = 1,
    max_attempts: int = MAX_ATTEMPTS,
    seed: int = 0,
) -> None:
    """Write train.csv/test.csv of fresh unique-solution puzzles rated by solver search effort."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_train), ("test", num_test)):
        triples = generate_puzzles(rng, count, min_rating, max_attempts=max_attempts)
        questions = ["".join(str(d) if d else "." for d in p) for p, _, _ in triples]
        answers = ["".join(map(str, s)) for _, s, _ in triples]
        write_csv(f"{output_dir}/{split}.csv", questions, answers, [r for _, _, r in triples], "generated")


def _parse(argv: list[str]) -> argparse.Namespace:
    build, gen = builder_parsers("build_sudoku_dataset.py", __doc__, generate.__doc__)
    build.add_argument("--num-aug", type=non_negative_int, default=0, help="symmetric copies per training puzzle")
    build.add_argument("--min-difficulty", type=int, default=None, help="keep puzzles rated at least this")
    gen.add_argument("--min-rating", type=int, default=1, help="minimum search nodes (1 = needs guessing)")
    gen.add_argument(
        "--max-attempts",
        type=positive_int,
        default=MAX_ATTEMPTS,
        help="give up after this many rejected puzzles in a row (about 40 ms each)",
    )
    return parse_builder_args(argv, build, gen)


def main(argv: list[str] | None = None) -> None:
    run_cli(_parse(sys.argv[1:] if argv is None else argv), {"build": build, "generate": generate})


if __name__ == "__main__":
    main()
