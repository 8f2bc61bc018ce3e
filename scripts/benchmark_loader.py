"""Measure TrainSampler throughput (examples/s, one loading thread) on small self-built datasets.

python scripts/benchmark_loader.py [--batch-size 8192] [--seconds 3] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time

from dataset.build_arc_dataset import main as build_arc
from dataset.puzzle_dataset import PuzzleDataset, TrainSampler
from dataset.smoke import build_smoke_dataset

ARC_PREFIX = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "arc", "arc-agi")


def throughput(data_path: str, batch_size: int, seconds: float) -> float:
    sampler = TrainSampler(
        PuzzleDataset([data_path], "train"), batch_size, seed=0, process_index=0, process_count=1, prefetch=0
    )  # measure loading itself, no thread
    sampler.next_batch()  # warm the page cache and the first epoch plan
    start, examples = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        examples += len(sampler.next_batch()["inputs"])
    return examples / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--sudoku-puzzles", type=int, default=100_000)
    p.add_argument("--arc-prefix", default=ARC_PREFIX, help="Kaggle-layout ARC files (training subset is used)")
    p.add_argument("--arc-num-aug", type=int, default=8)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        sudoku = build_smoke_dataset(os.path.join(tmp, "sudoku"), args.sudoku_puzzles, seed=0)
        results["sudoku_examples_per_s"] = throughput(sudoku, args.batch_size, args.seconds)
        arc = os.path.join(tmp, "arc")
        with contextlib.redirect_stdout(io.StringIO()):  # keep --json output parseable
            build_arc(
                [
                    "--input-file-prefix",
                    args.arc_prefix,
                    "--output-dir",
                    arc,
                    "--subsets",
                    "training",
                    "--test-set-name",
                    "none",
                    "--num-aug",
                    str(args.arc_num_aug),
                ]
            )
        results["arc_examples_per_s"] = throughput(arc, args.batch_size, args.seconds)
    if args.json:
        print(json.dumps(results))
    else:
        for name, value in results.items():
            print(f"{name}: {value:,.0f}")


if __name__ == "__main__":
    main()
