"""Tiny ARC inputs in the Kaggle combined layout, cut from the shared ARC files."""

import json
from pathlib import Path

SHARED_PREFIX = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "arc" / "arc-agi")


def write_tiny_arc(dest_prefix, tasks_per_subset=(("training", 3), ("evaluation", 2))):
    for subset, count in tasks_per_subset:
        with open(f"{SHARED_PREFIX}_{subset}_challenges.json") as f:
            challenges = json.load(f)
        with open(f"{SHARED_PREFIX}_{subset}_solutions.json") as f:
            solutions = json.load(f)
        names = sorted(challenges)[:count]
        for kind, data in (("challenges", challenges), ("solutions", solutions)):
            with open(f"{dest_prefix}_{subset}_{kind}.json", "w") as f:
                json.dump({n: data[n] for n in names}, f)
