"""Run experiments of the scaling study one after another.

    python experiments/run_batch.py [NAMES...] [--pattern GLOB] [--list] [--dry-run]
        [--continue-on-failure] [--log-dir DIR] [-- hydra overrides for every run]

Without NAMES or --pattern: every study run (experiments/table.py STUDY). A run whose
summary.json says "completed" is skipped: the trainer writes that file only after the final
checkpoint is durable, so re-running the same command after a crash continues where it stopped.
Each run logs to <log-dir>/<name>.log (appended, one header per attempt); <log-dir>/
batch_summary.json gets each run's status, wall time and final metrics after every run.
Overrides may use the config's own fields: 'run_dir=/scratch/${experiment_name}'.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shlex
import sys
import time
from collections import deque
from pathlib import Path

from experiments.run_experiment import CONFIG_ERRORS, ROOT, Plan, command, launch, plan
from experiments.table import BY_NAME, EXPERIMENTS, STUDY

TAIL_LINES = 20


def select(names: list[str], patterns: list[str]) -> list[str]:
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown experiments: {', '.join(unknown)} (see --list)")
    chosen = list(names)
    for pattern in patterns:
        chosen += [e.name for e in EXPERIMENTS if fnmatch.fnmatchcase(e.name, pattern)]
    if not names and not patterns:
        chosen = [e.name for e in STUDY]
    return list(dict.fromkeys(chosen))


def read_summary(p: Plan) -> dict | None:
    """The run's summary.json when it marks a completed run."""
    try:
        summary = json.loads(p.summary_file.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return summary if summary.get("status") == "completed" else None


def _tail(path: Path) -> str:
    with open(path, errors="replace") as f:
        return "".join(deque(f, maxlen=TAIL_LINES))


def run_one(p: Plan, log_dir: Path) -> dict:
    log = log_dir / f"{p.name}.log"
    cmd = command(p)
    start = time.time()
    with open(log, "a") as f:
        f.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
        f.flush()
        rc = launch(cmd, log=f)
    wall = time.time() - start
    summary = read_summary(p)
    record = {"returncode": rc, "wall_time_s": round(wall, 1), "log": str(log)}
    if rc == 0 and summary is not None:
        return {**record, "status": "completed", "final_metrics": summary.get("final_metrics", {})}
    why = f"exit code {rc}" if rc else "exited 0 without a completed summary.json"
    print(f"--- {p.name} failed ({why}); last lines of {log}:\n{_tail(log)}", file=sys.stderr)
    return {**record, "status": "failed", "error": why}


def visit(head: str, name: str, overrides: list[str], args: argparse.Namespace, log_dir: Path) -> dict | None:
    """List, show, skip or run one experiment; its batch_summary.json record (None: nothing to record)."""
    exp = BY_NAME[name]
    try:
        p = plan(name, overrides)
    except CONFIG_ERRORS as err:
        print(f"{head}: invalid configuration: {err}", file=sys.stderr)
        return {"status": "invalid", "error": str(err)}
    done = read_summary(p)
    base = {"group": exp.group, "run_dir": str(p.run_dir)}
    if args.list:
        print(f"{name:24s} {exp.group:10s} {'completed' if done else 'pending':9s}  {exp.description}")
        return None
    if done is not None:
        print(f"{head}: already completed, skipping ({p.summary_file})")
        return {**base, "status": "skipped", "final_metrics": done.get("final_metrics", {})}
    if args.dry_run:
        print(f"{head}: would run {shlex.join(command(p))}  ->  {p.run_dir}")
        return None
    print(f"{head}: running, log {log_dir / (name + '.log')}", flush=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    record = {**base, **run_one(p, log_dir)}
    print(f"{head}: {record['status']} in {record['wall_time_s']:.0f} s", flush=True)
    return record


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, overrides = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="experiment names (default: the whole study)")
    parser.add_argument("--pattern", action="append", default=[], help="glob over names, e.g. 'exp0[12]*'")
    parser.add_argument("--list", action="store_true", help="list the selected runs and their status")
    parser.add_argument("--dry-run", action="store_true", help="validate every config and show what would run")
    parser.add_argument("--continue-on-failure", action="store_true")
    parser.add_argument("--log-dir", default=str(ROOT / "runs" / "logs"))
    args = parser.parse_args(own)
    names = select(args.names, args.pattern)

    log_dir = Path(args.log_dir)
    summary_path = log_dir / "batch_summary.json"
    recording = not (args.dry_run or args.list)  # listing and dry runs only report
    results: dict[str, dict] = {}
    if summary_path.exists() and recording:
        results = json.loads(summary_path.read_text())

    failed = []
    for i, name in enumerate(names, 1):
        record = visit(f"[{i}/{len(names)}] {name}", name, overrides, args, log_dir)
        if record is None:
            continue
        if recording:
            results[name] = record
            log_dir.mkdir(parents=True, exist_ok=True)
            summary_path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        if record["status"] in ("invalid", "failed"):
            failed.append(name)
            if recording and not args.continue_on_failure:
                print(f"stopping after the failure of {name} (--continue-on-failure runs the rest)", file=sys.stderr)
                break
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
