"""The on-disk puzzle dataset format shared by all builders, the loader and the evaluators.

The layout is byte-compatible with the official TinyRecursiveModels format, so datasets built
here load in the official PyTorch code and vice versa. Token arrays are stored as uint8 (the
official builders write int64): every vocabulary here is < 256, and the 8x smaller files make
mmap reads proportionally cheaper.

`<out>/<split>/dataset.json` holds PuzzleDatasetMetadata; for each set it names, the split
directory holds `<set>__<field>.npy`:

    inputs, labels       [examples, seq_len]  tokens
    puzzle_identifiers   [puzzles]            row of the puzzle-embedding table
    puzzle_indices       [puzzles + 1]        first example of each puzzle, then the example count
    group_indices        [groups + 1]         first puzzle of each group, then the puzzle count

Every group holds at least one puzzle and every puzzle at least one example: the sampler draws
one puzzle per group and examples from it, and could never fill a batch otherwise.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pydantic

from dataset.errors import DatasetError, MissingFileError
from dataset.storage import read_text

INDEX_FIELDS = ("puzzle_identifiers", "puzzle_indices", "group_indices")
TOKEN_FIELDS = ("inputs", "labels")
BLANK_IDENTIFIER = "<blank>"
# Keys that must agree between datasets fed to one model (the token format).
_SHARED_KEYS = ("seq_len", "vocab_size", "pad_id", "ignore_label_id", "blank_identifier_id")
_SCAN_CHUNK = 1 << 24  # elements per slice when scanning memory-mapped tokens


class PuzzleDatasetMetadata(pydantic.BaseModel):
    pad_id: int = pydantic.Field(ge=0)
    ignore_label_id: int | None
    blank_identifier_id: int = pydantic.Field(ge=0)
    vocab_size: int = pydantic.Field(ge=1)
    seq_len: int = pydantic.Field(ge=1)
    num_puzzle_identifiers: int = pydantic.Field(ge=1)
    total_groups: int = pydantic.Field(ge=1)
    mean_puzzle_examples: float = pydantic.Field(gt=0, allow_inf_nan=False)
    total_puzzles: int = pydantic.Field(ge=1)
    sets: list[str] = pydantic.Field(min_length=1)

    @pydantic.model_validator(mode="after")
    def _ids_in_range(self) -> PuzzleDatasetMetadata:
        if self.pad_id >= self.vocab_size:
            raise ValueError(f"pad_id={self.pad_id} must be < vocab_size={self.vocab_size}")
        if self.blank_identifier_id >= self.num_puzzle_identifiers:
            raise ValueError(
                f"blank_identifier_id={self.blank_identifier_id} must be < "
                f"num_puzzle_identifiers={self.num_puzzle_identifiers}"
            )
        return self


def index_dtype(max_value: int) -> type:
    return np.int32 if max_value < 2**31 else np.int64


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
    if vocab_size > 256:
        raise DatasetError(f"vocab_size={vocab_size}: tokens are stored as uint8, so at most 256 are supported")
    arrays_of = {name: {f: np.asarray(a) for f, a in arrays.items()} for name, arrays in sets.items()}
    first = next(iter(arrays_of.values()), None)
    if first is None:
        raise DatasetError(f"{split_dir}: no sets to write; the builder produced no data for split {split!r}")
    seq_len = first["inputs"].shape[-1]
    for name, arrays in arrays_of.items():
        prefix = os.path.join(split_dir, name)
        check_set(prefix, arrays, seq_len=seq_len)
        check_tokens(prefix, arrays, vocab_size=vocab_size, ignore_label_id=ignore_label_id)
        check_puzzle_ids(prefix, arrays["puzzle_identifiers"], num_puzzle_identifiers=num_puzzle_identifiers)
    os.makedirs(split_dir, exist_ok=True)
    for name, arrays in arrays_of.items():
        for field in TOKEN_FIELDS:
            np.save(os.path.join(split_dir, f"{name}__{field}.npy"), arrays[field].astype(np.uint8))
        for field in INDEX_FIELDS:
            values = arrays[field]
            np.save(os.path.join(split_dir, f"{name}__{field}.npy"), values.astype(index_dtype(int(values.max()))))
    examples, puzzles, groups = _counts(arrays_of)
    metadata = PuzzleDatasetMetadata(
        pad_id=pad_id,
        ignore_label_id=ignore_label_id,
        blank_identifier_id=blank_identifier_id,
        vocab_size=vocab_size,
        seq_len=seq_len,
        num_puzzle_identifiers=num_puzzle_identifiers,
        total_groups=groups,
        mean_puzzle_examples=examples / puzzles,
        total_puzzles=puzzles,
        sets=list(arrays_of),
    )
    with open(os.path.join(split_dir, "dataset.json"), "w") as f:
        json.dump(metadata.model_dump(), f)
    return metadata


def write_identifiers(out_dir: str, names: Sequence[str]) -> None:
    with open(os.path.join(out_dir, "identifiers.json"), "w") as f:
        json.dump(list(names), f)


def load_metadata(data_path: str, split: str) -> PuzzleDatasetMetadata:
    """`<data_path>/<split>/dataset.json`, validated; a missing or malformed file is a DatasetError."""
    path = f"{data_path.rstrip('/')}/{split}/dataset.json"
    try:
        text = read_text(path)
    except MissingFileError as e:
        raise MissingFileError(
            f"split {split!r} missing: {path} not found; build the dataset (dataset/build_*.py) into {data_path}"
        ) from e
    try:
        return PuzzleDatasetMetadata.model_validate_json(text)
    except pydantic.ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'file'}: {err['msg']}" for err in e.errors())
        raise DatasetError(f"{path}: {problems}; rebuild the dataset or correct the file") from None


def check_same_format(a: PuzzleDatasetMetadata, b: PuzzleDatasetMetadata, where_a: str, where_b: str) -> None:
    """Datasets fed to one model must share the token format."""
    for key in _SHARED_KEYS:
        if getattr(a, key) != getattr(b, key):
            raise DatasetError(
                f"metadata key {key!r} differs: {getattr(a, key)} in {where_a} vs {getattr(b, key)} in {where_b}; "
                "rebuild them with the same builder settings"
            )


def merged_set_names(metas: Sequence[PuzzleDatasetMetadata]) -> list[str]:
    """Set names of several datasets viewed as one: those of dataset i > 0 get suffix str(i), as officially."""
    return [name + (str(i) if i else "") for i, meta in enumerate(metas) for name in meta.sets]


def merge_metadata(metas: Sequence[PuzzleDatasetMetadata], paths: Sequence[str]) -> PuzzleDatasetMetadata:
    """The metadata of several datasets of one format viewed as one, as the official loader merges it.

    Identifier counts add up (each dataset keeps its own puzzle embeddings) and
    `mean_puzzle_examples` is the mean over all puzzles. The training schedule is computed from
    the result, so the loader and the experiment dry-run must both use this function.
    """
    if len(metas) == 1:
        return metas[0]
    for meta, path in zip(metas[1:], paths[1:], strict=True):
        check_same_format(metas[0], meta, paths[0], path)
    total_puzzles = sum(m.total_puzzles for m in metas)
    return metas[0].model_copy(
        update=dict(
            num_puzzle_identifiers=sum(m.num_puzzle_identifiers for m in metas),
            total_groups=sum(m.total_groups for m in metas),
            total_puzzles=total_puzzles,
            mean_puzzle_examples=sum(m.mean_puzzle_examples * m.total_puzzles for m in metas) / total_puzzles,
            sets=merged_set_names(metas),
        )
    )


def check_set(prefix: str, arrays: Mapping[str, np.ndarray], *, seq_len: int) -> None:
    """Shapes, dtypes and index structure of one set; `prefix` is `<split dir>/<set>`, so messages name the file."""

    def fail(field: str, problem: str) -> None:
        raise DatasetError(f"{prefix}__{field}.npy: {problem}; rebuild the dataset")

    inputs, labels = arrays["inputs"], arrays["labels"]
    for field in TOKEN_FIELDS + INDEX_FIELDS:
        if arrays[field].dtype.kind not in "iu":
            fail(field, f"dtype {arrays[field].dtype} is not an integer type")
    if inputs.ndim != 2 or inputs.shape[1] != seq_len:
        fail("inputs", f"shape {inputs.shape} is not [examples, seq_len={seq_len}] (seq_len as in dataset.json)")
    if labels.shape != inputs.shape:
        fail("labels", f"shape {labels.shape} differs from the inputs' {inputs.shape}")
    if not len(inputs):
        fail("inputs", "the set has no examples")
    for field in INDEX_FIELDS:
        if arrays[field].ndim != 1 or not arrays[field].size:
            fail(field, f"shape {arrays[field].shape} is not a non-empty vector")
    num_puzzles = len(arrays["puzzle_identifiers"])
    if len(arrays["puzzle_indices"]) != num_puzzles + 1:
        fail(
            "puzzle_indices", f"has {len(arrays['puzzle_indices'])} entries for {num_puzzles} puzzles (needs one more)"
        )
    _check_offsets(lambda problem: fail("puzzle_indices", problem), arrays["puzzle_indices"], len(inputs), "examples")
    _check_offsets(lambda problem: fail("group_indices", problem), arrays["group_indices"], num_puzzles, "puzzles")


def _check_offsets(fail: Callable[[str], None], offsets: np.ndarray, end: int, of: str) -> None:
    if offsets[0] != 0 or offsets[-1] != end:
        fail(f"must run from 0 to {end} (the number of {of}) but runs from {offsets[0]} to {offsets[-1]}")
    empty = np.flatnonzero(np.diff(offsets) <= 0)
    if len(empty):
        item = "puzzle" if of == "examples" else "group"
        fail(f"{item} {empty[0]} has no {of} ({len(empty)} such); every {item} needs at least one")


def check_totals(split_dir: str, meta: PuzzleDatasetMetadata, sets: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """dataset.json's counts against the arrays: a wrong total_groups would silently change the schedule."""
    examples, puzzles, groups = _counts(sets)
    recorded_puzzles = puzzles
    if examples == puzzles and meta.total_puzzles == groups:
        # The official Sudoku and maze builders record the number of groups as total_puzzles when
        # every example is its own puzzle; accept it so their datasets load unchanged.
        recorded_puzzles = groups
    found = {"total_groups": groups, "total_puzzles": recorded_puzzles}
    for key, value in found.items():
        if getattr(meta, key) != value:
            raise DatasetError(
                f"{split_dir}/dataset.json: {key} is {getattr(meta, key)} but the arrays hold {value}; "
                "rebuild the dataset (or correct dataset.json)"
            )
    if not math.isclose(meta.mean_puzzle_examples, examples / puzzles, rel_tol=1e-6):
        raise DatasetError(
            f"{split_dir}/dataset.json: mean_puzzle_examples is {meta.mean_puzzle_examples} but the arrays hold "
            f"{examples} examples in {puzzles} puzzles ({examples / puzzles:.6g}); rebuild the dataset"
        )


def check_tokens(
    prefix: str, arrays: Mapping[str, np.ndarray], *, vocab_size: int, ignore_label_id: int | None
) -> None:
    """Tokens in [0, vocab_size); labels may also be `ignore_label_id`. A token past the embedding
    table would not fail in XLA (gathers clamp), it would silently train on the wrong row."""
    ignored_outside_vocab = ignore_label_id is not None and not 0 <= ignore_label_id < vocab_size
    for field in TOKEN_FIELDS:
        skip = ignore_label_id if field == "labels" and ignored_outside_vocab else None
        lo, hi = _value_range(arrays[field], skip=skip)
        if lo < 0 or hi >= vocab_size:
            raise DatasetError(
                f"{prefix}__{field}.npy: token {lo if lo < 0 else hi} is outside the vocabulary [0, {vocab_size}); "
                "the tokens do not match dataset.json (or the model's vocab_size): rebuild the dataset"
            )


def check_puzzle_ids(prefix: str, ids: np.ndarray, *, num_puzzle_identifiers: int) -> None:
    """Puzzle identifiers in [0, num_puzzle_identifiers), the rows of the puzzle-embedding table."""
    lo, hi = _value_range(ids, skip=None)
    if lo < 0 or hi >= num_puzzle_identifiers:
        raise DatasetError(
            f"{prefix}__puzzle_identifiers.npy: puzzle identifier {lo if lo < 0 else hi} is outside the "
            f"puzzle-embedding table [0, {num_puzzle_identifiers}); rebuild the dataset, or train and evaluate "
            "on splits built together"
        )


def _value_range(values: np.ndarray, *, skip: int | None) -> tuple[int, int]:
    """(min, max) of an integer array, ignoring the value `skip`; (0, 0) when nothing is left.
    Scanned in slices, so a memory-mapped file is never copied whole into memory."""
    flat = values.reshape(-1)
    lows, highs = [], []
    for start in range(0, flat.size, _SCAN_CHUNK):
        chunk = flat[start : start + _SCAN_CHUNK]
        if skip is not None:
            chunk = chunk[chunk != skip]
        if chunk.size:
            lows.append(int(chunk.min()))
            highs.append(int(chunk.max()))
    return (min(lows), max(highs)) if lows else (0, 0)


def _counts(sets: Mapping[str, Mapping[str, np.ndarray]]) -> tuple[int, int, int]:
    """(examples, puzzles, groups) over all sets of a split."""
    examples = sum(len(a["inputs"]) for a in sets.values())
    puzzles = sum(len(a["puzzle_identifiers"]) for a in sets.values())
    groups = sum(len(a["group_indices"]) - 1 for a in sets.values())
    return examples, puzzles, groups
