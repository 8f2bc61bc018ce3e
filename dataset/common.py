"""On-disk puzzle dataset format shared by all builders, the loader and the evaluators.

The layout is byte-compatible with the official TinyRecursiveModels format, so datasets built
here load in the official PyTorch code and vice versa. Token arrays are stored as uint8 (the
official builders write int64): every vocabulary here is < 256, and the 8x smaller files make
mmap reads proportionally cheaper.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pydantic

INDEX_FIELDS = ("puzzle_identifiers", "puzzle_indices", "group_indices")
TOKEN_FIELDS = ("inputs", "labels")
SPLITS = ("train", "test")
BLANK_IDENTIFIER = "<blank>"


class DatasetError(ValueError):
    """A dataset file is missing, malformed or inconsistent; the message says how to fix it."""


class PuzzleDatasetMetadata(pydantic.BaseModel):
    pad_id: int
    ignore_label_id: int | None
    blank_identifier_id: int
    vocab_size: int
    seq_len: int
    num_puzzle_identifiers: int
    total_groups: int
    mean_puzzle_examples: float
    total_puzzles: int
    sets: list[str]


# The 8 symmetries of the square, numbered as in the official code so augmentation names match.
DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)


def dihedral_transform(grid: np.ndarray, tid: int) -> np.ndarray:
    """Apply symmetry `tid` to the last two axes of `grid`."""
    ops = (
        lambda a: a,
        lambda a: np.rot90(a, 1, axes=(-2, -1)),
        lambda a: np.rot90(a, 2, axes=(-2, -1)),
        lambda a: np.rot90(a, 3, axes=(-2, -1)),
        lambda a: np.flip(a, -1),
        lambda a: np.flip(a, -2),
        lambda a: np.swapaxes(a, -2, -1),
        lambda a: np.flip(np.rot90(a, 1, axes=(-2, -1)), -1),
    )
    return ops[tid](grid)


def inverse_dihedral_transform(grid: np.ndarray, tid: int) -> np.ndarray:
    return dihedral_transform(grid, DIHEDRAL_INVERSE[tid])


def index_dtype(max_value: int) -> type:
    return np.int32 if max_value < 2**31 else np.int64


class SplitWriter:
    """Accumulates groups -> puzzles -> examples for one set of one split, then saves it."""

    def __init__(self) -> None:
        self.inputs: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.puzzle_identifiers: list[int] = []
        self.puzzle_indices = [0]
        self.group_indices = [0]

    def add_puzzle(self, inputs: np.ndarray, labels: np.ndarray, identifier: int) -> None:
        """`inputs`/`labels`: [num_examples, seq_len] tokens of one puzzle."""
        self.inputs.append(inputs)
        self.labels.append(labels)
        self.puzzle_identifiers.append(identifier)
        self.puzzle_indices.append(self.puzzle_indices[-1] + len(inputs))

    def end_group(self) -> None:
        self.group_indices.append(len(self.puzzle_identifiers))

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "inputs": np.concatenate(self.inputs),
            "labels": np.concatenate(self.labels),
            "puzzle_identifiers": np.asarray(self.puzzle_identifiers, np.int32),
            "puzzle_indices": np.asarray(self.puzzle_indices),
            "group_indices": np.asarray(self.group_indices),
        }


def write_split(
    out_dir: str,
    split: str,
    sets: Mapping[str, Mapping[str, np.ndarray]],
    *,
    pad_id: int,
    ignore_label_id: int | None,
    vocab_size: int,
    num_puzzle_identifiers: int,
    blank_identifier_id: int = 0,
) -> PuzzleDatasetMetadata:
    """Save `sets[set_name][field]` arrays and dataset.json under `out_dir/split`."""
    split_dir = os.path.join(out_dir, split)
    os.makedirs(split_dir, exist_ok=True)
    totals = {"examples": 0, "puzzles": 0, "groups": 0}
    seq_len = None
    for set_name, arrays in sets.items():
        _check_set_arrays(set_name, arrays, vocab_size)
        seq_len = arrays["inputs"].shape[1]
        for field in TOKEN_FIELDS:
            np.save(os.path.join(split_dir, f"{set_name}__{field}.npy"), np.asarray(arrays[field], np.uint8))
        for field in INDEX_FIELDS:
            values = np.asarray(arrays[field])
            np.save(
                os.path.join(split_dir, f"{set_name}__{field}.npy"),
                values.astype(index_dtype(int(values.max(initial=0)))),
            )
        totals["examples"] += len(arrays["inputs"])
        totals["puzzles"] += len(arrays["puzzle_identifiers"])
        totals["groups"] += len(arrays["group_indices"]) - 1
    metadata = PuzzleDatasetMetadata(
        pad_id=pad_id,
        ignore_label_id=ignore_label_id,
        blank_identifier_id=blank_identifier_id,
        vocab_size=vocab_size,
        seq_len=seq_len,
        num_puzzle_identifiers=num_puzzle_identifiers,
        total_groups=totals["groups"],
        mean_puzzle_examples=totals["examples"] / max(totals["puzzles"], 1),
        total_puzzles=totals["puzzles"],
        sets=list(sets),
    )
    with open(os.path.join(split_dir, "dataset.json"), "w") as f:
        json.dump(metadata.model_dump(), f)
    return metadata


def _check_set_arrays(set_name: str, arrays: Mapping[str, np.ndarray], vocab_size: int) -> None:
    inputs, labels = arrays["inputs"], arrays["labels"]
    if inputs.shape != labels.shape or inputs.ndim != 2:
        raise DatasetError(
            f"set {set_name!r}: inputs {inputs.shape} and labels {labels.shape} must both be [N, seq_len]"
        )
    if inputs.size and max(int(inputs.max()), int(labels.max())) >= vocab_size:
        raise DatasetError(f"set {set_name!r}: token >= vocab_size={vocab_size}; fix the builder's token mapping")
    indices = np.asarray(arrays["puzzle_indices"])
    if indices[0] != 0 or indices[-1] != len(inputs) or np.any(np.diff(indices) <= 0):
        raise DatasetError(f"set {set_name!r}: puzzle_indices must rise strictly from 0 to {len(inputs)}")


def write_identifiers(out_dir: str, names: Sequence[str]) -> None:
    with open(os.path.join(out_dir, "identifiers.json"), "w") as f:
        json.dump(list(names), f)


def write_manifest(out_dir: str, builder: str, args: Mapping[str, Any]) -> None:
    """Record sha256 of every file plus the builder arguments, so a dataset can be verified and rebuilt."""
    files = {}
    for root, _, names in os.walk(out_dir):
        for name in sorted(names):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, out_dir)
            if rel != "manifest.json":
                files[rel] = _sha256_file(path)
    manifest = {"builder": builder, "args": dict(args), "files": dict(sorted(files.items()))}
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


def verify_manifest(out_dir: str) -> None:
    with open(os.path.join(out_dir, "manifest.json")) as f:
        manifest = json.load(f)
    for rel, digest in manifest["files"].items():
        if _sha256_file(os.path.join(out_dir, rel)) != digest:
            raise DatasetError(f"{os.path.join(out_dir, rel)}: sha256 differs from manifest.json; rebuild the dataset")


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_text(path: str) -> str:
    """Read a local or remote (gs://, any fsspec URL) text file."""
    import fsspec

    try:
        with fsspec.open(path, "r") as f:
            return f.read()
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: file not found; check the path or build the dataset first") from e


def read_puzzle_csv(path: str, length: int) -> tuple[list[str], list[str], np.ndarray]:
    """Parse a `source,question,answer,rating` CSV into questions, answers and int ratings."""
    import csv
    import io

    rows = csv.reader(io.StringIO(read_text(path)))
    header = next(rows, None)
    if header != ["source", "question", "answer", "rating"]:
        raise DatasetError(f"{path}: header is {header}, expected source,question,answer,rating")
    questions, answers, ratings = [], [], []
    for line, row in enumerate(rows, start=2):
        if len(row) != 4 or len(row[1]) != length or len(row[2]) != length:
            raise DatasetError(
                f"{path} line {line}: expected 4 fields with {length}-character question and answer, got {row[:4]}"
            )
        try:
            ratings.append(int(float(row[3])))
        except ValueError as e:
            raise DatasetError(f"{path} line {line}: rating {row[3]!r} is not a number") from e
        questions.append(row[1])
        answers.append(row[2])
    if not questions:
        raise DatasetError(f"{path}: no puzzle rows after the header; regenerate the file")
    return questions, answers, np.asarray(ratings, np.int64)


def chars_to_codes(strings: Sequence[str], table: np.ndarray, path: str, what: str) -> np.ndarray:
    """Map equal-length ASCII strings to codes via a 256-entry `table` (-1 = invalid)."""
    raw = np.frombuffer("".join(strings).encode("latin-1"), np.uint8).reshape(len(strings), -1)
    codes = table[raw]
    bad = np.argwhere(codes < 0)
    if len(bad):
        row, col = bad[0]
        raise DatasetError(
            f"{path} line {row + 2}: invalid character {chr(raw[row, col])!r} at position {col} of the {what}"
        )
    return codes.astype(np.uint8)


def write_csv(path: str, questions: Sequence[str], answers: Sequence[str], ratings: Sequence[int], source: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write("source,question,answer,rating\n")
        for q, a, r in zip(questions, answers, ratings, strict=False):
            f.write(f"{source},{q},{a},{r}\n")


def build_atomically(path: str, build: Callable[[str], object]) -> None:
    """Run `build(staging_dir)` and rename the result to `path`, unless a complete dataset
    (manifest written last) is already there. Several processes sharing a filesystem may race:
    the first rename wins and the others discard their copy."""
    if os.path.exists(os.path.join(path, "manifest.json")):
        return
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=".staging-")
    build(staging)
    try:
        os.rename(staging, path)
    except OSError:
        shutil.rmtree(staging)


def run_cli(args, commands: Mapping[str, Callable[..., object]]) -> None:
    """Run a builder CLI's sub-command (`args.command`) and time it; a DatasetError becomes a
    one-line error and exit status 1."""
    kwargs = dict(vars(args))
    command = kwargs.pop("command")
    start = time.perf_counter()
    try:
        commands[command](**kwargs)
    except DatasetError as e:
        sys.exit(f"error: {e}")
    print(f"{command} finished in {time.perf_counter() - start:.2f} s -> {kwargs['output_dir']}")


def builder_parsers(
    script: str, doc: str, generate_doc: str
) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The build and `generate` sub-command parsers, with the options every builder shares."""
    build = argparse.ArgumentParser(prog=script, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    build.add_argument("--source", required=True, help="directory or gs:// prefix with train.csv and test.csv")
    gen = argparse.ArgumentParser(prog=f"{script} generate", description=generate_doc)
    gen.add_argument("--num-train", type=int, required=True)
    gen.add_argument("--num-test", type=int, required=True)
    for p in (build, gen):
        p.add_argument("--output-dir", required=True)
        p.add_argument("--seed", type=int, default=0)
    return build, gen


def parse_builder_args(
    argv: list[str], build: argparse.ArgumentParser, gen: argparse.ArgumentParser
) -> argparse.Namespace:
    if argv[:1] == ["generate"]:
        return gen.parse_args(argv[1:], namespace=argparse.Namespace(command="generate"))
    return build.parse_args(argv, namespace=argparse.Namespace(command="build"))
