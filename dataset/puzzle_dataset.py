"""Host-side data loading: deterministic, resumable, multi-process sharded batches.

The sampler is hand-written rather than built on grain: TRM's official sampling packs
*groups -> one random puzzle -> a random subset of its examples* into fixed-size batches, which
no grain sampler expresses, and we need the exact position of a global stream to be a tiny JSON
state (epoch, cursor) so a resumed run sees bit-identical batches. Every process computes the
same global batch indices (cheap index arithmetic) and reads only its own rows from mmap'd
arrays, so no shared filesystem or cross-host communication is needed.
"""

from __future__ import annotations

import hashlib
import os
import queue
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from dataset.errors import DatasetError
from dataset.format import (
    INDEX_FIELDS,
    TOKEN_FIELDS,
    PuzzleDatasetMetadata,
    check_puzzle_ids,
    check_set,
    check_tokens,
    check_totals,
    load_metadata,
    merge_metadata,
    merged_set_names,
)
from models.losses import IGNORE_LABEL_ID


def _local_split_dir(data_path: str, split: str, cache_dir: str | None) -> str:
    """Local directory holding the split; remote (gs://...) splits are copied once into a cache.

    The cache is keyed by URL and refreshed when the remote dataset.json changes; the copy goes
    to a temporary directory first and is renamed, so concurrent processes never see half a split.
    """
    if "://" not in data_path:
        return os.path.join(data_path, split)
    import fsspec

    fs, root = fsspec.core.url_to_fs(f"{data_path.rstrip('/')}/{split}")
    key = hashlib.sha256(data_path.encode()).hexdigest()[:16]
    dest = os.path.join(cache_dir or os.path.join(tempfile.gettempdir(), "trm-dataset-cache"), key, split)
    remote_meta = fs.cat_file(f"{root}/dataset.json")
    local_meta = os.path.join(dest, "dataset.json")
    if os.path.exists(local_meta) and open(local_meta, "rb").read() == remote_meta:
        return dest
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    staging = tempfile.mkdtemp(dir=os.path.dirname(dest))
    for remote in fs.ls(root, detail=False):
        fs.get_file(remote, os.path.join(staging, os.path.basename(remote)))
    if os.path.exists(dest):
        os.rename(dest, tempfile.mkdtemp(dir=os.path.dirname(dest)))  # stale: move aside atomically
    os.rename(staging, dest)
    return dest


class PuzzleDataset:
    """One split of one or more datasets, viewed as a single concatenated example space.

    With several `data_paths`, puzzle identifiers of later paths are offset by the identifier
    counts of earlier ones (the merged `num_puzzle_identifiers` is their sum), so each path keeps
    its own puzzle embeddings; the blank identifier stays shared. The set names of path i > 0 get
    suffix str(i), as in the official loader.
    """

    def __init__(self, data_paths: Sequence[str], split: str, *, cache_dir: str | None = None):
        if not data_paths:
            raise DatasetError("data_paths is empty: name at least one dataset directory")
        metas = [load_metadata(p, split) for p in data_paths]
        self.metadata = merge_metadata(metas, data_paths)
        self.data_paths = list(data_paths)
        self.split = split
        self.sets: list[tuple[str, int, int]] = []  # (name, first global example, end)
        self._tokens: list[dict[str, np.ndarray]] = []
        self._files: list[str] = []  # `<split dir>/<set>` of each set, for messages
        self._puzzle_spans: list[tuple[int, int]] = []  # (first global puzzle, end) of each set
        index_parts: dict[str, list[np.ndarray]] = {f: [] for f in INDEX_FIELDS}
        examples = puzzles = id_offset = 0
        names = iter(merged_set_names(metas))
        for path, meta in zip(data_paths, metas, strict=True):
            local = _local_split_dir(path, split, cache_dir)
            loaded = {name: _load_set(local, name, meta) for name in meta.sets}
            check_totals(local, meta, loaded)
            for set_name, arrays in loaded.items():
                self._tokens.append({f: arrays[f] for f in TOKEN_FIELDS})
                self._files.append(os.path.join(local, set_name))
                self.sets.append((next(names), examples, examples + len(arrays["inputs"])))
                self._puzzle_spans.append((puzzles, puzzles + len(arrays["puzzle_identifiers"])))
                ids = arrays["puzzle_identifiers"].astype(np.int64)
                index_parts["puzzle_identifiers"].append(
                    np.where(ids == meta.blank_identifier_id, ids, ids + id_offset)
                )
                index_parts["puzzle_indices"].append(arrays["puzzle_indices"][:-1].astype(np.int64) + examples)
                index_parts["group_indices"].append(arrays["group_indices"][:-1].astype(np.int64) + puzzles)
                examples += len(arrays["inputs"])
                puzzles += len(ids)
            id_offset += meta.num_puzzle_identifiers
        self.num_examples = examples
        self.puzzle_identifiers = np.concatenate(index_parts["puzzle_identifiers"]).astype(np.int32)
        self.puzzle_indices = np.append(np.concatenate(index_parts["puzzle_indices"]), examples)
        self.group_indices = np.append(np.concatenate(index_parts["group_indices"]), puzzles)
        self._set_starts = np.array([start for _, start, _ in self.sets], np.int64)

    @property
    def num_groups(self) -> int:
        return len(self.group_indices) - 1

    def describe(self) -> str:
        return f"split {self.split!r} of {', '.join(self.data_paths)}"

    def check_ranges(self, *, vocab_size: int, num_puzzle_identifiers: int) -> None:
        """Fail unless every token and puzzle identifier fits the model's embedding tables (XLA
        clamps out-of-range gathers, so a mismatch would train silently on wrong rows). Tokens
        were checked against dataset.json's vocab_size on opening, so they are scanned again only
        for a smaller table."""
        for s, prefix in enumerate(self._files):
            if vocab_size < self.metadata.vocab_size:
                check_tokens(
                    prefix, self._tokens[s], vocab_size=vocab_size, ignore_label_id=self.metadata.ignore_label_id
                )
            first, end = self._puzzle_spans[s]
            check_puzzle_ids(prefix, self.puzzle_identifiers[first:end], num_puzzle_identifiers=num_puzzle_identifiers)

    def puzzles_of(self, example_ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.puzzle_indices, example_ids, side="right") - 1

    def read_rows(self, example_ids: np.ndarray, puzzle_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Collate rows (global example ids) into model-ready int32 arrays."""
        inputs = np.empty((len(example_ids), self.metadata.seq_len), np.int32)
        labels = np.empty_like(inputs)
        which = np.searchsorted(self._set_starts, example_ids, side="right") - 1
        for s in np.unique(which):
            rows = which == s if len(self.sets) > 1 else slice(None)
            local = example_ids[rows] - self._set_starts[s]
            inputs[rows] = self._tokens[s]["inputs"][local]
            labels[rows] = self._tokens[s]["labels"][local]
        if self.metadata.ignore_label_id is not None:
            labels[labels == self.metadata.ignore_label_id] = IGNORE_LABEL_ID
        return {"inputs": inputs, "labels": labels, "puzzle_identifiers": self.puzzle_identifiers[puzzle_ids]}


def _load_set(split_dir: str, set_name: str, meta: PuzzleDatasetMetadata) -> dict[str, np.ndarray]:
    """One set's arrays, checked against its dataset.json: structure, token and identifier ranges."""
    arrays = {}
    for field in TOKEN_FIELDS + INDEX_FIELDS:
        path = os.path.join(split_dir, f"{set_name}__{field}.npy")
        if not os.path.exists(path):
            raise DatasetError(f"{path} missing; the dataset is incomplete, rebuild it")
        try:
            # Token arrays stay on disk: each process touches only the rows of its own shard.
            arrays[field] = np.load(path, mmap_mode="r" if field in TOKEN_FIELDS else None)
        except (ValueError, OSError) as e:
            raise DatasetError(f"{path}: not a readable .npy file ({e}); rebuild the dataset") from None
    prefix = os.path.join(split_dir, set_name)
    check_set(prefix, arrays, seq_len=meta.seq_len)
    check_tokens(prefix, arrays, vocab_size=meta.vocab_size, ignore_label_id=meta.ignore_label_id)
    check_puzzle_ids(prefix, arrays["puzzle_identifiers"], num_puzzle_identifiers=meta.num_puzzle_identifiers)
    return arrays


class _BatchPlanner:
    """Pure function of (seed, state) -> next global batch, following the official sampling.

    Each epoch visits the groups in a fresh permutation; a group contributes one random puzzle
    and a random subset of that puzzle's examples, truncated to what still fits in the batch.
    Batches run across epoch boundaries, so nothing is dropped.
    """

    def __init__(self, dataset: PuzzleDataset, global_batch_size: int, seed: int):
        self.dataset, self.batch_size, self.seed = dataset, global_batch_size, seed
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(segment offsets [G+1], example ids [T], puzzle ids [T]) of the epoch's example stream."""
        if epoch not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k == epoch - 1}
            self._cache[epoch] = self._build_epoch(np.random.default_rng([self.seed, epoch]))
        return self._cache[epoch]

    def _build_epoch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ds = self.dataset
        groups = rng.permutation(len(ds.group_indices) - 1)
        puzzles = rng.integers(ds.group_indices[groups], ds.group_indices[groups + 1])
        starts = ds.puzzle_indices[puzzles]
        sizes = ds.puzzle_indices[puzzles + 1] - starts
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        if sizes.max() == 1:  # one example per puzzle (Sudoku, mazes): nothing to shuffle
            return offsets, starts, puzzles
        segment = np.repeat(np.arange(len(sizes)), sizes)
        shuffled = np.lexsort((rng.random(len(segment)), segment))  # permutes within each segment
        return offsets, starts[segment] + shuffled - offsets[segment], puzzles[segment]

    def next(self, state: dict[str, int]) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        epoch, cursor, need = state["epoch"], state["cursor"], self.batch_size
        examples, puzzles = [], []
        while need:
            offsets, ex, pz = self._epoch(epoch)
            base = offsets[cursor]
            end = int(np.searchsorted(offsets, base + need, side="right")) - 1
            stop = offsets[end]
            if stop - base < need and end < len(offsets) - 1:
                stop, end = base + need, end + 1  # truncate the group that does not fit
            examples.append(ex[base:stop])
            puzzles.append(pz[base:stop])
            need -= int(stop - base)
            epoch, cursor = (epoch + 1, 0) if end == len(offsets) - 1 else (epoch, end)
        new_state = {"epoch": epoch, "cursor": cursor, "batches": state["batches"] + 1}
        return np.concatenate(examples), np.concatenate(puzzles), new_state


class TrainSampler:
    """Endless stream of this process's rows of each global training batch, prefetched in a thread."""

    def __init__(
        self,
        dataset: PuzzleDataset,
        global_batch_size: int,
        *,
        seed: int,
        process_index: int,
        process_count: int,
        prefetch: int = 2,
    ):
        if global_batch_size % process_count:
            raise ValueError(f"global_batch_size={global_batch_size} is not divisible by process_count={process_count}")
        check_batch_fits(dataset, global_batch_size)
        self.dataset = dataset
        self.global_batch_size = global_batch_size
        self._planner = _BatchPlanner(dataset, global_batch_size, seed)
        local = global_batch_size // process_count
        self._rows = slice(process_index * local, (process_index + 1) * local)
        self._prefetch = prefetch
        self._state = {"epoch": 0, "cursor": 0, "batches": 0}
        self._worker: tuple[threading.Thread, threading.Event, queue.Queue] | None = None

    def _produce(self, state: dict[str, int]) -> tuple[dict[str, int], dict[str, np.ndarray]]:
        examples, puzzles, state = self._planner.next(state)
        return state, self.dataset.read_rows(examples[self._rows], puzzles[self._rows])

    def _run(self, state: dict[str, int], stop: threading.Event, out: queue.Queue) -> None:
        try:
            while not stop.is_set():
                item = self._produce(state)
                state = item[0]
                while not stop.is_set():
                    try:
                        out.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        pass
        except Exception as e:  # surfaced to the training loop by next_batch
            out.put((None, e))

    def next_batch(self) -> dict[str, np.ndarray]:
        if self._prefetch <= 0:
            self._state, batch = self._produce(self._state)
            return batch
        if self._worker is None:
            stop, out = threading.Event(), queue.Queue(self._prefetch)
            thread = threading.Thread(target=self._run, args=(dict(self._state), stop, out), daemon=True)
            thread.start()
            self._worker = (thread, stop, out)
        state, batch = self._worker[2].get()
        if state is None:
            raise batch
        self._state = state
        return batch

    def get_state(self) -> dict[str, int]:
        """The position in the global stream, plus the size of the data it refers to."""
        return {**self._state, "groups": self.dataset.num_groups, "examples": self.dataset.num_examples}

    def set_state(self, state: Mapping[str, int]) -> None:
        """Continue from a get_state() position, which must belong to this training set."""
        self.close()
        self._state = _position_in(self.dataset, state)

    def close(self) -> None:
        """Stop the prefetch thread; the next next_batch restarts it from the current state."""
        if self._worker is not None:
            thread, stop, _ = self._worker
            stop.set()
            thread.join()
            self._worker = None

    @property
    def epochs_done(self) -> float:
        meta = self.dataset.metadata
        return self._state["batches"] * self.global_batch_size / (meta.total_groups * meta.mean_puzzle_examples)


def check_batch_fits(dataset: PuzzleDataset, global_batch_size: int) -> None:
    """A training batch larger than the data would repeat examples within every batch."""
    if global_batch_size > dataset.num_examples:
        raise DatasetError(
            f"global_batch_size={global_batch_size} is larger than the {dataset.num_examples} examples of "
            f"{dataset.describe()}; lower global_batch_size to at most {dataset.num_examples}, or use more data"
        )


def _position_in(dataset: PuzzleDataset, state: Mapping[str, int]) -> dict[str, int]:
    """The sampler position of `state`, refused with a one-line reason when it does not fit `dataset`."""
    fix = "resume with the data_paths the run started with, or start a new run_dir"
    try:
        position = {key: int(state[key]) for key in ("epoch", "cursor", "batches")}
    except (KeyError, TypeError, ValueError):
        raise DatasetError(f"saved data position {dict(state)} lacks integer epoch, cursor and batches") from None
    for key, now in (("groups", dataset.num_groups), ("examples", dataset.num_examples)):
        if key in state and int(state[key]) != now:
            raise DatasetError(
                f"the saved data position is for training data of {state[key]} {key}, but {dataset.describe()} "
                f"has {now}; {fix}"
            )
    if min(position.values()) < 0 or position["cursor"] >= dataset.num_groups:
        raise DatasetError(
            f"the saved data position (epoch {position['epoch']}, group {position['cursor']}) does not fit "
            f"{dataset.describe()} with {dataset.num_groups} groups; {fix}"
        )
    return position


# Keeps the subset's random stream apart from the training sampler's ([seed, epoch]).
_EVAL_SUBSET_STREAM = 0x5EB5E7


def eval_subset(dataset: PuzzleDataset, size: int, *, seed: int) -> np.ndarray:
    """`size` example ids of `dataset` drawn without replacement (every id when it has no more),
    sorted: a function of the seed and the dataset alone, so every process and every resumed run
    evaluates the same examples."""
    n = dataset.num_examples
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, _EVAL_SUBSET_STREAM]).choice(n, size, replace=False))


def eval_batches(
    dataset: PuzzleDataset,
    global_batch_size: int,
    *,
    process_index: int,
    process_count: int,
    examples: np.ndarray | None = None,
) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """Every example once (or every one of `examples`, sorted global ids), set by set, in order;
    the last batch of a set is padded to full size."""
    local = global_batch_size // process_count
    meta = dataset.metadata
    for name, first, end in dataset.sets:
        ids = np.arange(first, end) if examples is None else examples[(examples >= first) & (examples < end)]
        for batch_start in range(0, len(ids), global_batch_size):
            lo = batch_start + process_index * local
            rows = ids[lo : lo + local]
            batch = dataset.read_rows(rows, dataset.puzzles_of(rows))
            pad = local - len(rows)
            if pad:
                fill = {
                    "inputs": meta.pad_id,
                    "labels": IGNORE_LABEL_ID,
                    "puzzle_identifiers": meta.blank_identifier_id,
                }
                batch = {
                    k: np.concatenate([v, np.full((pad,) + v.shape[1:], fill[k], v.dtype)]) for k, v in batch.items()
                }
            yield name, batch
