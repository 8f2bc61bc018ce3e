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
from dataset.cli import non_negative_int
from dataset.errors import DatasetError
from dataset.format import BLANK_IDENTIFIER, write_identifiers, write_split
from dataset.manifest import write_manifest

RETRIES_PER_AUGMENTATION = 5
Examples = list[tuple[np.ndarray, np.ndarray]]


def load_tasks(prefix: str, subset: str, *, hidden_solutions: bool = False) -> dict[str, dict]:
    """Tasks of `<prefix>_<subset>_challenges.json`, test outputs filled from the solutions file.

    With `hidden_solutions` (a test set whose answers are withheld, as on Kaggle) a missing
    solutions file is allowed and the unknown outputs are [[0]], as in the official builder.
    """
    path = f"{prefix}_{subset}_challenges.json"
    tasks = _read_json_object(path, "check --input-file-prefix and --subsets")
    if not tasks:
        raise DatasetError(f"{path}: holds no tasks; check the file")
    for name, task in tasks.items():
        _check_task(task, f"{path} task {name}")
    if all("output" in pair for task in tasks.values() for pair in task["test"]):
        return tasks
    solutions_path = f"{prefix}_{subset}_solutions.json"
    if hidden_solutions and not os.path.exists(solutions_path):
        solutions = {name: [[[0]]] * len(task["test"]) for name, task in tasks.items()}
    else:
        solutions = _read_json_object(
            solutions_path, "the test outputs are needed (for a hidden test set pass --hidden-test-solutions)"
        )
    for name, task in tasks.items():
        missing = [i for i, pair in enumerate(task["test"]) if "output" not in pair]
        known = solutions.get(name)
        unsolved = [i for i in missing if not isinstance(known, list) or i >= len(known)]
        if unsolved:
            raise DatasetError(
                f"{solutions_path}: no solution for test input {unsolved[0]} of task {name}; "
                "use the solutions file that belongs to the challenges file"
            )
        for i in missing:
            task["test"][i]["output"] = known[i]
    return tasks


def _read_json_object(path: str, hint: str) -> dict:
    if not os.path.exists(path):
        raise DatasetError(f"{path} not found; {hint}")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not valid JSON ({e}); the file may be truncated, download it again") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object of task name -> task, got {type(data).__name__}")
    return data


def _check_task(task: object, where: str) -> None:
    """The keys the builder reads: {"train": [{"input", "output"}...], "test": [{"input"}...]}."""
    if not isinstance(task, dict) or not all(isinstance(task.get(split), list) for split in ("train", "test")):
        raise DatasetError(f'{where}: expected an object with "train" and "test" lists of pairs')
    for split, keys in (("train", ("input", "output")), ("test", ("input",))):
        for i, pair in enumerate(task[split]):
            absent = [key for key in keys if not isinstance(pair, dict) or key not in pair]
            if absent:
                raise DatasetError(f"{where}: {split} pair {i} has no {' or '.join(map(repr, absent))}")
    for split in ("train", "test"):
        if not task[split]:
            raise DatasetError(f"{where}: no {split} pairs; every task needs demonstrations and a test input")


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
        hidden = args.hidden_test_solutions and subset == args.test_set_name
        for name, task in load_tasks(args.input_file_prefix, subset, hidden_solutions=hidden).items():
            where = f"{args.input_file_prefix}_{subset}_challenges.json task {name}"
            examples = {
                split: [
                    tuple(grid_to_np(pair[key], f"{where} {split} pair {i} {key}") for key in ("input", "output"))
                    for i, pair in enumerate(task[split])
                ]
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
    if args.test_set_name not in args.subsets:
        raise DatasetError(
            f"--test-set-name {args.test_set_name!r} is not among --subsets {args.subsets}: the test split would be "
            "empty; add it to --subsets"
        )
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
    p.add_argument("--num-aug", type=non_negative_int, default=1000)
    p.add_argument(
        "--hidden-test-solutions",
        action="store_true",
        help="the test set's solutions file is withheld (Kaggle): build its test split with unknown outputs",
    )
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
