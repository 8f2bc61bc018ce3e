"""Run experiments of the scaling study one after another, each distinct training once.

    python experiments/run_batch.py [NAMES...] [--pattern GLOB] [--list] [--dry-run] [--plan]
        [--replicate-duplicates] [--continue-on-failure] [--log-dir DIR]
        [--peak-tflops T] [--mfu M] [--json PATH|-] [-- hydra overrides for every run]

Without NAMES or --pattern: the study (experiments/table.py STUDY, the baseline included; the
paper's recipes are group `paper`, chosen by name or --pattern 'paper_*'). Experiments whose
resolved configs are the same training (experiments/dedup.py: equal but for names, groups,
paths and the EMA weights they report) are trained once, as the first of them in the table
(the canonical run, e.g. `baseline`); the others become aliases: their run_dir gets a
config.yaml and a summary.json with status "alias" and `alias_of`, pointing at the canonical
run's metrics. --replicate-duplicates instead trains exact duplicates with seeds seed+1,
seed+2, ... for error bars.

A run whose summary.json says "completed" for this run's config is skipped (a summary written
by a smoke run or another config does not count), so re-running the same command after a crash
continues where it stopped. Each run logs to <log-dir>/<name>.log (appended, one header per
attempt); <log-dir>/batch_summary.json gets each run's status, wall time and final metrics after
every run, with totals (runs by status, wall time, device-hours). --plan prints what the
selection costs (experiments/plan.py) and runs nothing.
Overrides may use the config's own fields: 'run_dir=/scratch/${experiment_name}'.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shlex
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from experiments import plan as cost
from experiments.dedup import MULTI_EMA, RAW, Training, evaluated_weightings, group_trainings, training_key, weighting
from experiments.run_experiment import CONFIG_ERRORS, ROOT, Plan, command, launch, plan
from experiments.table import BY_NAME, EXPERIMENTS, STUDY
from training.config import apply_smoke, validate

TAIL_LINES = 20


def select(names: list[str], patterns: list[str], default: list[str]) -> list[str]:
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown experiments: {', '.join(unknown)} (see --list)")
    chosen = list(names)
    for pattern in patterns:
        matched = [e.name for e in EXPERIMENTS if fnmatch.fnmatchcase(e.name, pattern)]
        if not matched:
            raise SystemExit(f"--pattern {pattern!r} matches no experiment; names are listed by --list")
        chosen += matched
    return list(dict.fromkeys(chosen or default))


# ---------------------------------------------------------------- is a run done?


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _recorded_config(p: Plan, summary: dict) -> dict | None:
    """The config the summary was written for: its own record, else the run's config.yaml."""
    if isinstance(summary.get("config"), dict):
        return summary["config"]
    try:
        raw = OmegaConf.create(yaml.safe_load((p.run_dir / "config.yaml").read_text()))
        # Smoke settings are applied at start-up; apply_smoke is idempotent, so this reads a
        # config.yaml written before or after them alike.
        return validate(apply_smoke(raw)).model_dump()
    except (OSError, ValueError, yaml.YAMLError, *CONFIG_ERRORS):
        return None


def finished(p: Plan) -> tuple[dict | None, str | None]:
    """(summary, None) when p's summary.json records a completed training of p's config;
    (None, why not) when a summary exists but does not count; (None, None) when there is none."""
    summary = _read_json(p.summary_file)
    if summary is None or summary.get("status") != "completed":
        return None, None
    if "smoke" in summary and bool(summary["smoke"]) != p.cfg.smoke.enabled:
        return None, f"{p.summary_file} is from a {'smoke' if summary['smoke'] else 'full'} run"
    if "config_hash" in summary and "config" not in summary and summary["config_hash"] != p.cfg.hash():
        return None, f"{p.summary_file} was written for another config (hash {summary['config_hash']})"
    recorded = _recorded_config(p, summary)
    if recorded is None:
        return None, f"{p.summary_file} has no readable config to check it against"
    mine = p.cfg.model_dump()
    if recorded.get("smoke", {}).get("enabled") != p.cfg.smoke.enabled:
        return None, f"{p.summary_file} is from a {'smoke' if recorded['smoke']['enabled'] else 'full'} run"
    if training_key(recorded) != training_key(mine) or weighting(mine) not in evaluated_weightings(recorded):
        return None, f"{p.summary_file} was written for another config"
    return summary, None


# ---------------------------------------------------------------- the batch


@dataclass
class Batch:
    """Every experiment of the table planned with the batch's overrides, and its training."""

    overrides: list[str]
    replicate: bool
    plans: dict[str, Plan] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)
    trainings: dict[str, Training] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for exp in EXPERIMENTS:
            try:
                self.plans[exp.name] = plan(exp.name, self.overrides)
            except CONFIG_ERRORS as err:
                self.invalid[exp.name] = str(err)
        configs = {n: p.cfg.model_dump() for n, p in self.plans.items()}
        self.trainings = group_trainings(configs, multi_ema=MULTI_EMA, replicate=self.replicate)

    def training_plan(self, name: str) -> Plan:
        """How the canonical run `name` trains: a replica on its own seed; with several EMA
        shadows to report, keeping all of them."""
        p, t = self.plans[name], self.trainings[name]
        extra = [f"seed={p.cfg.seed + t.replica}"] if t.replica else []
        if len(t.weightings) > 1:
            extra.append(f"ema_rates=[{','.join(f'{r:g}' for r in t.ema_rates())}]")
        return plan(name, [*self.overrides, *extra]) if extra else p


def _tail(path: Path) -> str:
    with open(path, errors="replace") as f:
        return "".join(deque(f, maxlen=TAIL_LINES))


def _outcome(summary: dict) -> dict:
    """What a batch record keeps of a run's summary.json: its final metrics and cost."""
    return {
        "final_metrics": summary.get("final_metrics", {}),
        **({"cost": summary["cost"]} if "cost" in summary else {}),
    }


def totals(records: dict[str, dict]) -> dict:
    """Run counts by status, and the time and device-hours the batch's records spent."""
    costs = [r.get("cost") or {} for r in records.values()]
    return {
        "runs": dict(Counter(r["status"] for r in records.values())),
        "wall_time_s": round(sum(r.get("wall_time_s") or 0.0 for r in records.values()), 1),
        "device_hours": sum(c.get("device_hours") or 0.0 for c in costs),
    }


def run_one(p: Plan, log_dir: Path) -> dict:
    log = log_dir / f"{p.name}.log"
    cmd = command(p)
    start = time.time()
    with open(log, "a") as f:
        f.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
        f.flush()
        rc = launch(cmd, log=f)
    wall = time.time() - start
    summary, stale = finished(p)
    record = {"returncode": rc, "wall_time_s": round(wall, 1), "log": str(log)}
    if rc == 0 and summary is not None:
        return {**record, "status": "completed", **_outcome(summary)}
    why = f"exit code {rc}" if rc else f"exited 0 without a completed summary.json ({stale or 'none written'})"
    print(f"--- {p.name} failed ({why}); last lines of {log}:\n{_tail(log)}", file=sys.stderr)
    return {**record, "status": "failed", "error": why}


def shadow_metrics(metrics: dict, wanted: str, primary: str) -> dict:
    """The final metrics of one weighting of a multi-EMA training, named as a single run names
    them: the primary weighting logs under eval/..., another under eval_raw/... or
    eval_ema<rate>/... (e.g. eval_ema0.99/all/exact_accuracy)."""
    if wanted == primary:
        return metrics
    prefix = "eval_raw/" if wanted == RAW else f"eval_ema{wanted.split()[1]}/"
    return {"eval/" + k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}


def write_alias(p: Plan, canonical: Plan, canonical_summary: dict) -> dict:
    """config.yaml (unless the run_dir has one) and summary.json of an alias; never over a
    summary.json that records a real training."""
    existing = _read_json(p.summary_file)
    if existing is not None and existing.get("status") != "alias":
        raise FileExistsError(
            f"{p.summary_file} records a {existing.get('status')} run that is not {p.name}'s training; "
            f"move it away to record {p.name} as an alias of {canonical.name}"
        )
    p.run_dir.mkdir(parents=True, exist_ok=True)
    config_file = p.run_dir / "config.yaml"
    if not config_file.exists():
        config_file.write_text(yaml.safe_dump(p.cfg.model_dump(), sort_keys=False))
    mine, theirs = weighting(p.cfg.model_dump()), weighting(canonical.cfg.model_dump())
    summary = {
        "status": "alias",
        "alias_of": canonical.name,
        "note": f"not trained: the same training as {canonical.name} (experiments/dedup.py); "
        f"step, metrics and checkpoints are {canonical.name}'s, {mine} weights",
        "weighting": mine,
        "canonical_run_dir": str(canonical.run_dir),
        "metrics_file": str(canonical.run_dir / "metrics.jsonl"),
        "canonical_summary": str(canonical.summary_file),
        "checkpoint_dir": canonical_summary.get("checkpoint_dir", canonical.paths.checkpoint_dir),
        "config_hash": p.cfg.hash(),
        "smoke": p.cfg.smoke.enabled,
        "final_metrics": shadow_metrics(canonical_summary.get("final_metrics") or {}, mine, theirs),
        **{k: canonical_summary.get(k) for k in ("step", "total_steps", "num_params", "num_puzzle_emb_params")},
    }
    tmp = p.summary_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, p.summary_file)
    return summary


# ---------------------------------------------------------------- visiting the selection


class Runner:
    """Trains canonical runs (each at most once per batch) and records aliases."""

    def __init__(self, batch: Batch, log_dir: Path, *, dry_run: bool):
        self.batch, self.log_dir, self.dry_run = batch, log_dir, dry_run
        self.records: dict[str, dict] = {}  # this batch's records, canonical runs trained as dependencies included
        self.announced: set[str] = set()  # dry run: canonical runs already shown

    def _base(self, name: str, p: Plan) -> dict:
        return {"group": BY_NAME[name].group, "run_dir": str(p.run_dir)}

    def train(self, name: str, head: str) -> dict | None:
        if name in self.records:
            return self.records[name]
        p = self.batch.training_plan(name)
        done, stale = finished(p)
        if done is not None:
            print(f"{head}: already completed, skipping ({p.summary_file})")
            record = {**self._base(name, p), "status": "skipped", **_outcome(done)}
        elif self.dry_run:
            if name not in self.announced:
                print(f"{head}: would train {shlex.join(command(p))}  ->  {p.run_dir}\n    {cost.cost_line(p.cfg)}")
            self.announced.add(name)
            return None
        else:
            if stale:
                print(f"{head}: {stale}; it does not count as this run's result", file=sys.stderr)
            print(f"{head}: running, log {self.log_dir / (name + '.log')}", flush=True)
            self.log_dir.mkdir(parents=True, exist_ok=True)
            record = {**self._base(name, p), **run_one(p, self.log_dir)}
            print(f"{head}: {record['status']} in {record['wall_time_s']:.0f} s", flush=True)
        self.records[name] = record
        return record

    def alias(self, name: str, head: str) -> dict | None:
        canonical = self.batch.trainings[name].canonical
        p, c = self.batch.plans[name], self.batch.training_plan(canonical)
        if p.run_dir == c.run_dir:
            return self._fail(
                name, p, f"{name} and {canonical} share run_dir {p.run_dir}; use ${{experiment_name}} in it"
            )
        done, _ = finished(p)
        if done is not None:  # trained on its own earlier, e.g. before the deduplication
            print(f"{head}: already completed on its own, skipping ({p.summary_file})")
            return {**self._base(name, p), "status": "skipped", **_outcome(done)}
        if self.dry_run:
            print(f"{head}: alias of {canonical}: {p.summary_file} will point at {canonical}'s training")
            self.train(canonical, f"{head} -> {canonical}")
            return None
        record = self.train(canonical, f"{head} -> {canonical}")
        if record is None or record["status"] not in ("completed", "skipped"):
            return self._fail(name, p, f"its training {canonical} did not complete")
        try:
            summary = write_alias(p, c, finished(c)[0] or {})
        except (FileExistsError, OSError) as err:
            return self._fail(name, p, str(err))
        print(f"{head}: alias of {canonical}, wrote {p.summary_file}")
        return {**self._base(name, p), "status": "alias", "alias_of": canonical, **_outcome(summary)}

    def _fail(self, name: str, p: Plan, why: str) -> dict:
        print(f"{name}: {why}", file=sys.stderr)
        return {**self._base(name, p), "status": "failed", "error": why}


def list_line(batch: Batch, name: str) -> str:
    exp = BY_NAME[name]
    if name in batch.invalid:
        return f"{name:22s} {exp.group:10s} {'invalid':9s} {'':26s} {exp.description}"
    t = batch.trainings[name]
    done = finished(batch.training_plan(t.canonical))[0] is not None
    if t.canonical != name:
        role = f"alias of {t.canonical}"
    elif len(t.members) > 1:
        role = f"trained for {len(t.members)} runs"
    else:
        role = f"replica {t.replica}" if t.replica else ""
    return f"{name:22s} {exp.group:10s} {'completed' if done else 'pending':9s} {role:26s} {exp.description}"


def show_plan(names: list[str], overrides: list[str], args: argparse.Namespace) -> int:
    cfgs = {}
    for exp in EXPERIMENTS:  # trainings are shared across the whole table
        try:
            cfgs[exp.name] = plan(exp.name, overrides).cfg
        except CONFIG_ERRORS as err:
            if exp.name in names:
                print(f"{exp.name}: invalid configuration: {err}", file=sys.stderr)
                return 2
    df = cost.plan_rows(cfgs, names, replicate=args.replicate_duplicates)
    numbers = {"peak_tflops": args.peak_tflops, "mfu": args.mfu}
    if args.json != "-":
        print(cost.render(df, **numbers))
    if args.json:
        text = json.dumps(cost.plan_json(df, **numbers), indent=2) + "\n"
        sys.stdout.write(text) if args.json == "-" else Path(args.json).write_text(text)
    return 0


def parse_args(own: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="experiment names (default: the whole study)")
    parser.add_argument("--pattern", action="append", default=[], help="glob over names, e.g. 'exp0[12]*'")
    parser.add_argument("--list", action="store_true", help="list the runs (default: all) with status and training")
    parser.add_argument("--dry-run", action="store_true", help="validate every config and show what would run")
    parser.add_argument("--plan", action="store_true", help="print steps, FLOPs and device time; run nothing")
    parser.add_argument("--replicate-duplicates", action="store_true", help="train duplicates with seeds +1, +2, ...")
    parser.add_argument("--continue-on-failure", action="store_true")
    parser.add_argument("--log-dir", default=str(ROOT / "runs" / "logs"))
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="--plan: dense peak of one device")
    parser.add_argument("--mfu", type=float, default=0.3, help="--plan: assumed model FLOPs utilisation")
    parser.add_argument("--json", help="--plan: also write the plan as JSON to this file ('-': stdout only)")
    args = parser.parse_args(own)
    if not (args.peak_tflops > 0 and 0 < args.mfu <= 1):
        parser.error(f"need --peak-tflops > 0 and 0 < --mfu <= 1 (got {args.peak_tflops:g}, {args.mfu:g})")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, overrides = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = parse_args(own)
    default = [e.name for e in (EXPERIMENTS if args.list else STUDY)]
    names = select(args.names, args.pattern, default)
    if args.plan:
        return show_plan(names, overrides, args)

    batch = Batch(overrides, args.replicate_duplicates)
    if args.list:
        for name in names:
            print(list_line(batch, name))
        return 0
    log_dir = Path(args.log_dir)
    summary_path = log_dir / "batch_summary.json"
    previous = (_read_json(summary_path) or {}) if not args.dry_run else {}
    results = previous.get("runs", {})
    runner = Runner(batch, log_dir, dry_run=args.dry_run)
    failed = []
    for i, name in enumerate(names, 1):
        head = f"[{i}/{len(names)}] {name}"
        if name in batch.invalid:
            print(f"{head}: invalid configuration: {batch.invalid[name]}", file=sys.stderr)
            record = {"status": "invalid", "error": batch.invalid[name]}
        elif batch.trainings[name].canonical == name:
            record = runner.train(name, head)
        else:
            record = runner.alias(name, head)
        if record is None:  # dry run
            continue
        if not args.dry_run:
            results.update({**runner.records, name: record})
            log_dir.mkdir(parents=True, exist_ok=True)
            text = json.dumps({"runs": results, "totals": totals(results)}, indent=2, sort_keys=True)
            summary_path.write_text(text + "\n")
        if record["status"] in ("invalid", "failed"):
            failed.append(name)
            if not (args.dry_run or args.continue_on_failure):
                print(f"stopping after the failure of {name} (--continue-on-failure runs the rest)", file=sys.stderr)
                break
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
