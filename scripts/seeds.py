"""Train one config with several seeds and report mean ± sd, not one lucky run.

    python scripts/seeds.py                                   # the quick start, seeds 0-4
    python scripts/seeds.py --seeds 0 1 2 --jobs 2 -- epochs=50 arch.hidden_size=32
    python scripts/seeds.py --config-name exp01a --out-dir runs/seeds/exp01a --json seeds.json

Each seed is an ordinary `pretrain_jax.py` run in its own process and run directory
(`<out-dir>/seed_<s>`), so a seed that finished is reused, an interrupted one resumes, and `--jobs`
runs several at once. The report has, per seed and as mean ± sd (sample standard deviation):
held-out exact and token accuracy, the average ACT step at which the Q head halts (the adaptive
answer's steps) and the q-halt accuracy of the final evaluation, and the wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# (column, metric in summary.json's final_metrics, scale) of the report.
COLUMNS = (
    ("exact acc %", "eval/{set}/exact_accuracy", 100.0),
    ("token acc %", "eval/{set}/accuracy", 100.0),
    ("halt step", "eval/{set}/adaptive_steps", 1.0),
    ("q-halt acc %", "eval/{set}/q_halt_accuracy", 100.0),
)


def run_seed(seed: int, *, config_name: str, out_dir: Path, overrides: list[str]) -> dict:
    """Train (or reuse) one seed; returns its summary.json plus the log path."""
    run_dir = out_dir / f"seed_{seed}"
    summary_file = run_dir / "summary.json"
    if summary_file.exists() and json.loads(summary_file.read_text()).get("status") == "completed":
        return json.loads(summary_file.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "seeds_log.txt"
    cmd = [sys.executable, str(REPO / "pretrain_jax.py"), "--config-name", config_name, *overrides]
    cmd += [f"seed={seed}", f"run_dir={run_dir}"]
    with open(log, "w") as f:
        code = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT).returncode
    if code != 0 or not summary_file.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"seed {seed} failed (exit {code}); full log in {log}:\n{tail}")
    return json.loads(summary_file.read_text())


def mean_sd(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, sd


def report(seeds: list[int], summaries: list[dict], set_name: str) -> dict:
    rows = []
    for seed, s in zip(seeds, summaries, strict=True):
        m = s["final_metrics"]
        row = {"seed": seed, "wall_time_s": s["wall_time_s"], "step": s["step"]}
        for col, key, scale in COLUMNS:
            row[col] = scale * m[key.format(set=set_name)]
        rows.append(row)
    cols = [c for c, _, _ in COLUMNS] + ["wall_time_s"]
    return {"rows": rows, "mean_sd": {c: mean_sd([r[c] for r in rows]) for c in cols}}


def markdown(rep: dict) -> str:
    cols = [c for c, _, _ in COLUMNS] + ["wall_time_s"]
    lines = ["| seed | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in rep["rows"]:
        lines.append(f"| {r['seed']} | " + " | ".join(f"{r[c]:.1f}" for c in cols) + " |")
    stats = rep["mean_sd"]
    lines.append("| mean ± sd | " + " | ".join(f"{stats[c][0]:.1f} ± {stats[c][1]:.1f}" for c in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-name", default="quickstart")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once (each a process)")
    parser.add_argument("--out-dir", type=Path, default=None, help="default runs/seeds/<config-name>")
    parser.add_argument("--set", default="all", help="evaluation set whose metrics are reported")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every seed (after --)")
    args = parser.parse_args(argv)
    if args.jobs < 1 or not args.seeds or len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        parser.error("--jobs must be >= 1 and --seeds distinct non-negative integers")
    out_dir = args.out_dir or REPO / "runs" / "seeds" / args.config_name
    start = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        summaries = list(
            pool.map(
                lambda s: run_seed(s, config_name=args.config_name, out_dir=out_dir, overrides=args.overrides),
                args.seeds,
            )
        )
    rep = report(args.seeds, summaries, args.set)
    rep.update(config_name=args.config_name, overrides=args.overrides, total_wall_time_s=time.time() - start)
    print(markdown(rep))
    if args.json:
        args.json.write_text(json.dumps(rep, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
