"""Puzzle CSVs (`source,question,answer,rating`, the Sudoku-Extreme and Maze-Hard layout): reading
with errors that name the file and line, and writing."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dataset.errors import DatasetError
from dataset.storage import read_text

HEADER = ["source", "question", "answer", "rating"]


@dataclass(frozen=True)
class PuzzleCsv:
    """The rows of one CSV; `lines[i]` is the file line of row i, for error messages."""

    path: str
    questions: list[str]
    answers: list[str]
    ratings: np.ndarray
    lines: np.ndarray

    def select(self, keep: np.ndarray) -> PuzzleCsv:
        """The rows at `keep` (a boolean mask or indices), line numbers kept."""
        pick = np.arange(len(self.questions))[keep]
        return PuzzleCsv(
            self.path,
            [self.questions[i] for i in pick],
            [self.answers[i] for i in pick],
            self.ratings[pick],
            self.lines[pick],
        )


def read_puzzle_csv(path: str, length: int) -> PuzzleCsv:
    """Parse a puzzle CSV whose questions and answers are `length`-character ASCII strings."""
    text = read_text(path)
    if text.startswith("\ufeff"):
        raise DatasetError(f"{path}: starts with a UTF-8 byte-order mark (BOM); save it as UTF-8 without a BOM")
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if header != HEADER:
        raise DatasetError(f"{path}: header is {header}, expected {','.join(HEADER)}")
    questions, answers, ratings, lines = [], [], [], []
    end = rows.line_num
    for row in rows:
        first_line, end = end + 1, rows.line_num
        if not row:
            continue  # a blank line
        where = f"{path} line {first_line}"
        if len(row) != 4 or len(row[1]) != length or len(row[2]) != length:
            raise DatasetError(f"{where}: expected 4 fields with {length}-character question and answer, got {row[:4]}")
        questions.append(row[1])
        answers.append(row[2])
        ratings.append(_rating(row[3], where))
        lines.append(first_line)
    if not questions:
        raise DatasetError(f"{path}: no puzzle rows after the header; regenerate the file")
    return PuzzleCsv(path, questions, answers, np.asarray(ratings, np.int64), np.asarray(lines, np.int64))


def _rating(text: str, where: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(f"{where}: rating {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DatasetError(f"{where}: rating {text!r} is not a finite number")
    return int(value)


def chars_to_codes(strings: Sequence[str], table: np.ndarray, *, csv_file: PuzzleCsv, what: str) -> np.ndarray:
    """Map equal-length ASCII strings (rows of `csv_file`) to codes via a 256-entry `table` (-1 = invalid)."""
    joined = "".join(strings)
    length = len(strings[0]) if strings else 0
    try:
        raw = np.frombuffer(joined.encode("ascii"), np.uint8).reshape(len(strings), length)
    except UnicodeEncodeError as e:
        row, col = divmod(e.start, length)
        _invalid_character(csv_file, row, col, joined[e.start], what)
    codes = table[raw]
    bad = np.argwhere(codes < 0)
    if len(bad):
        row, col = bad[0]
        _invalid_character(csv_file, row, col, chr(raw[row, col]), what)
    return codes.astype(np.uint8)


def _invalid_character(csv_file: PuzzleCsv, row: int, col: int, char: str, what: str) -> None:
    raise DatasetError(
        f"{csv_file.path} line {csv_file.lines[row]}: invalid character {char!r} at position {col} of the {what}"
    )


def write_csv(path: str, questions: Sequence[str], answers: Sequence[str], ratings: Sequence[int], source: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(zip([source] * len(questions), questions, answers, ratings, strict=True))
