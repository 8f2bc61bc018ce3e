"""Validate, describe and launch one experiment of the scaling study.

    python experiments/run_experiment.py NAME [hydra overrides...] [--dry-run]
        [--num-processes N | --tpu]

NAME is a config under configs/experiments (see experiments/table.py). The config is composed
and validated first, so a bad override fails here, not minutes into a TPU job. Then training
starts as `python pretrain_jax.py --config-name NAME overrides...` (single host), through
scripts/launch_local.py (N local processes) or scripts/tpu/launch.sh (TPU pod). The exit code
is training's. Relative paths (data, runs) are relative to the repository root, where training
runs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dataset.format import PuzzleDatasetMetadata, load_metadata, merge_metadata
from experiments.plan import SUDOKU_DIMS, cost_line, data_size, run_cost
from models.trm import num_parameters
from training.config import ConfigError, PretrainConfig, apply_smoke, compose, validate
from training.run_paths import RunPaths, resolve_paths

ROOT = Path(__file__).resolve().parents[1]
# Invalid values, unknown config names and malformed overrides: the user's to fix, no traceback.
CONFIG_ERRORS = (ConfigError, HydraException, OmegaConfBaseException)


@dataclass(frozen=True)
class Plan:
    name: str
    overrides: tuple[str, ...]
    cfg: PretrainConfig  # what training will actually run (smoke applied)
    paths: RunPaths  # run_dir is relative to ROOT unless absolute

    @property
    def run_dir(self) -> Path:
        return ROOT / self.paths.run_dir

    @property
    def summary_file(self) -> Path:
        return ROOT / self.paths.summary_file


@functools.cache
def _composed(name: str, overrides: tuple[str, ...]):
    # Hydra takes ~0.1 s per composition and a batch plans every experiment of the table;
    # interpolations stay unresolved here, so each plan still resolves them afresh.
    return compose(name, list(overrides))


def plan(name: str, overrides: list[str] | tuple[str, ...] = ()) -> Plan:
    """Compose and validate; raises ConfigError (bad values) or a Hydra error (bad name/override)."""
    cfg = validate(apply_smoke(copy.deepcopy(_composed(name, tuple(overrides)))))
    with contextlib.chdir(ROOT):  # resolve_paths makes checkpoint paths absolute against the cwd
        paths = resolve_paths(cfg)
    return Plan(name, tuple(overrides), cfg, paths)


def dataset_metadata(data_paths: list[str]) -> PuzzleDatasetMetadata | None:
    """Merged train/dataset.json of local datasets, as the loader merges them; None when any is missing."""
    local = [str(ROOT / path) for path in data_paths]  # an absolute path stays itself
    if not all((Path(path) / "train" / "dataset.json").is_file() for path in local):
        return None
    return merge_metadata([load_metadata(path, "train") for path in local], local)


def describe(p: Plan) -> str:
    cfg = p.cfg
    size, built = data_size(cfg)
    dims = size.dims if size else SUDOKU_DIMS
    if size is None:
        dims_note = f"assumed 9x9 Sudoku: {', '.join(cfg.data_paths)} has no train/dataset.json and no default size"
    else:
        dims_note = size.source + ("" if built else f"; {', '.join(cfg.data_paths)} not built yet")
    n = num_parameters(
        cfg.arch, vocab_size=dims.vocab_size, seq_len=dims.seq_len, num_puzzle_identifiers=dims.num_puzzle_identifiers
    )
    lines = [
        f"# {p.name}: resolved config" + (" (smoke)" if cfg.smoke.enabled else ""),
        OmegaConf.to_yaml(OmegaConf.create(cfg.model_dump())).rstrip(),
        f"# dataset dims: vocab {dims.vocab_size}, seq_len {dims.seq_len}, "
        f"{dims.num_puzzle_identifiers:,} puzzle identifiers ({dims_note})",
        f"# parameters: {sum(n.values()):,} (model {n['model']:,}, puzzle_emb {n['puzzle_emb']:,})",
    ]
    if size is not None:
        total = run_cost(cfg, size, None).total_steps
        capped = f", capped at max_steps={cfg.max_steps}" if cfg.max_steps and cfg.max_steps < total else ""
        lines.append(f"# total steps: {total:,}{capped}")
    lines += [
        f"# cost: {cost_line(cfg)}",
        f"# run dir: {p.run_dir}",
        f"# checkpoints: {p.paths.checkpoint_dir}",
        f"# W&B: project {p.paths.wandb_project} (mode {cfg.wandb.mode})",
    ]
    return "\n".join(lines)


def command(p: Plan, num_processes: int | None = None, tpu: bool = False, tpu_name: str | None = None) -> list[str]:
    if tpu:
        # Without --tpu-name, launch.sh takes the pod from $TPU_NAME.
        pod = ["--tpu", tpu_name] if tpu_name else []
        return ["bash", "scripts/tpu/launch.sh", *pod, p.name, *p.overrides]
    train_args = ["--config-name", p.name, *p.overrides]
    if num_processes:
        return [sys.executable, "scripts/launch_local.py", "--num-processes", str(num_processes), "--", *train_args]
    return [sys.executable, "pretrain_jax.py", *train_args]


def launch(cmd: list[str], log: IO | None = None) -> int:
    """Run training from the repository root; `log` receives its stdout and stderr."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT if log else None).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="experiment config name, e.g. exp01a")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. wandb.mode=online")
    parser.add_argument("--dry-run", action="store_true", help="validate and describe, do not train")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--num-processes", type=int, default=None, help="local multi-process launch")
    where.add_argument("--tpu", action="store_true", help="launch on a TPU pod via scripts/tpu/launch.sh")
    parser.add_argument("--tpu-name", default=None, help="the pod for --tpu (default: $TPU_NAME)")
    args = parser.parse_intermixed_args(argv)
    try:
        p = plan(args.name, args.overrides)
    except CONFIG_ERRORS as err:
        print(f"{args.name}: {err}", file=sys.stderr)
        return 2
    print(describe(p))
    cmd = command(p, args.num_processes, args.tpu or bool(args.tpu_name), args.tpu_name)
    print("# command: " + shlex.join(cmd), flush=True)
    if args.dry_run:
        return 0
    return launch(cmd)


if __name__ == "__main__":
    sys.exit(main())
