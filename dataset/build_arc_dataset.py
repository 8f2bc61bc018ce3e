"""Build the ARC-AGI dataset (official TRM format) from Kaggle-layout challenge/solution JSON files.

    python dataset/build_arc_dataset.py --input-file-prefix ../shared/data/arc/arc-agi \
        --output-dir data/arc1 --subsets training evaluation concept --test-set-name evaluation

Each task and each of its augmentations (dihedral transform x colour permutation fixing colour 0,
de-duplicated) is a puzzle with its own identifier; a task's puzzles form one group. Demonstration
pairs of every task, and test pairs of tasks outside the test set, go to the train split; test
pairs of test-set tasks go to the test split (as in the official builder).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from dataset.arc_grids import CANVAS, augment, augmentation_name, examples_hash, grid_to_np, random_offset, to_sequences
from dataset.common import BLANK_IDENTIFIER, DatasetError, write_identifiers, write_manifest, write_split

RETRIES_PER_AUGMENTATION = 5
Examples = list[tuple[np.ndarray, np.ndarray]]


def load_tasks(prefix: str, subset: str) -> dict[str, dict]:
    """Tasks of `<prefix>_<subset>_challenges.json`, test outputs filled from the solutions file."""
    path = f"{prefix}_{subset}_challenges.json"
    if not os.path.exists(path):
        raise DatasetError(f"{path} not found; check --input-file-prefix and --subsets")
    with open(path) as f:
        tasks = json.load(f)
    solutions_path = f"{prefix}_{subset}_solutions.json"
    solutions = json.load(open(solutions_path)) if os.path.exists(solutions_path) else {}
    for name, task in tasks.items():
        for i, pair in enumerate(task["test"]):
            pair.setdefault("output", solutions[name][i] if name in solutions else [[0]])
    return tasks


def task_versions(
    rng: np.random.Generator, name: str, examples: dict[str, Examples], num_aug: int
) -> list[tuple[str, dict[str, Examples]]]:
    """The task itself plus up to `num_aug` distinct augmentations, each as (name, examples per split)."""
    versions = [(name, examples)]
    seen = {examples_hash([e for split in examples.values() for e in split])}
    for _ in range(RETRIES_PER_AUGMENTATION * num_aug):
        if len(versions) > num_aug:
            break
        tid = int(rng.integers(8))
        colours = np.concatenate([[0], rng.permutation(np.arange(1, 10))]).astype(np.uint8)
        augmented = {
            split: [(augment(i, tid, colours), augment(o, tid, colours)) for i, o in pairs]
            for split, pairs in examples.items()
        }
        h = examples_hash([e for split in augmented.values() for e in split])
        if h not in seen:
            seen.add(h)
            versions.append((augmentation_name(name, tid, colours), augmented))
    return versions


def collect(args: argparse.Namespace, rng: np.random.Generator) -> tuple[dict[str, list], dict[str, dict]]:
    """Groups per split (a group = list of (puzzle name, examples)) and the raw test-set tasks."""
    groups: dict[str, list] = {"train": [], "test": []}
    test_tasks = {}
    for subset in args.subsets:
        for name, task in load_tasks(args.input_file_prefix, subset).items():
            where = f"{args.input_file_prefix}_{subset} task {name}"
            examples = {
                split: [(grid_to_np(p["input"], where), grid_to_np(p["output"], where)) for p in task[split]]
                for split in ("train", "test")
            }
            if subset == args.test_set_name:
                test_tasks[name] = task
            else:  # all pairs of non-test tasks are training material
                examples = {"train": examples["train"] + examples["test"]}
            versions = task_versions(rng, name, examples, args.num_aug)
            for split in examples:
                groups[split].append([(version_name, ex[split]) for version_name, ex in versions])
    return groups, test_tasks


def split_arrays(
    rng: np.random.Generator, groups: list, identifiers: dict[str, int], translate: bool
) -> dict[str, np.ndarray]:
    """Token arrays of one split; training examples (but one per puzzle) get a random canvas offset."""
    total = sum(len(ex) for group in groups for _, ex in group)
    inputs = np.empty((total, CANVAS * CANVAS), np.uint8)
    labels = np.empty_like(inputs)
    puzzle_ids, puzzle_indices, group_indices, row = [], [0], [0], 0
    for group in groups:
        for name, examples in group:
            keep_in_place = int(rng.integers(len(examples)))
            for k, (inp, out) in enumerate(examples):
                offset = random_offset(rng, inp, out) if translate and k != keep_in_place else (0, 0)
                inputs[row], labels[row] = to_sequences(inp, out, offset)
                row += 1
            puzzle_ids.append(identifiers.setdefault(name, len(identifiers)))
            puzzle_indices.append(row)
        group_indices.append(len(puzzle_ids))
    return {
        "inputs": inputs,
        "labels": labels,
        "puzzle_identifiers": np.asarray(puzzle_ids),
        "puzzle_indices": np.asarray(puzzle_indices),
        "group_indices": np.asarray(group_indices),
    }


def build(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    groups, test_tasks = collect(args, rng)
    identifiers = {BLANK_IDENTIFIER: 0}
    arrays = {split: split_arrays(rng, groups[split], identifiers, translate=split == "train") for split in groups}
    for split, split_arrays_ in arrays.items():
        write_split(
            args.output_dir,
            split,
            {"all": split_arrays_},
            pad_id=0,
            ignore_label_id=0,
            vocab_size=12,
            num_puzzle_identifiers=len(identifiers),
        )
    write_identifiers(args.output_dir, list(identifiers))
    with open(os.path.join(args.output_dir, "test_puzzles.json"), "w") as f:
        json.dump(test_tasks, f)
    write_manifest(args.output_dir, "build_arc_dataset", vars(args))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input-file-prefix", required=True, help="e.g. ../shared/data/arc/arc-agi")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--subsets", nargs="+", default=["training", "evaluation", "concept"])
    p.add_argument("--test-set-name", default="evaluation")
    p.add_argument("--num-aug", type=int, default=1000)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    start = time.perf_counter()
    try:
        build(args)
    except DatasetError as e:
        sys.exit(f"error: {e}")
    print(f"built in {time.perf_counter() - start:.2f} s -> {args.output_dir}")


if __name__ == "__main__":
    main()
