"""Pre-flight check: is every worker ready to run this config? Run it on all workers at once.

    python scripts/preflight.py [--config-name NAME] [--expect-platform tpu|gpu|cpu]
        [--expect-processes N] [--expect-devices N] [OVERRIDE ...]

Takes the same config name and overrides as pretrain_jax.py and prints one line per check,
`ok` or `FAIL` with how to fix it:
  config       composes and validates
  distributed  jax.distributed starts with the run's settings and every process resolved the
               same config (several processes only)
  devices      the expected platform, processes and devices; the batch splits over them
  data         each data path has its dataset.json and arrays (local or gs://); with several
               processes, all of them read the same metadata
  checkpoints  the checkpoint directory takes a small write, read-back and delete of this
               check's own object (also gs://); with several processes, each one sees the
               others' objects, i.e. the location is shared as Orbax needs
  run_dir      process 0 can write the run directory
  disk         free space for max_to_keep + 1 checkpoints (Orbax writes the next one before
               dropping the oldest), sized exactly from the model, optimizer, EMA, puzzle
               embedding and ACT carry shapes, and for the local copy of gs:// datasets
  wandb        with wandb.mode=online, process 0 has WANDB_API_KEY or a netrc entry for the
               W&B host; no server is contacted
Exits 1 if any check failed on any process.
"""

from __future__ import annotations

import argparse
import math
import netrc
import os
import shutil
import socket
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlparse

import fsspec
import jax
import numpy as np
from jax.experimental import multihost_utils

from dataset.puzzle_dataset import INDEX_FIELDS, TOKEN_FIELDS, load_metadata
from models.act import initial_carry
from models.trm import ModelDims, TRMInner
from training import distributed
from training.config import PretrainConfig, apply_smoke, compose, validate
from training.optimizers import build_optimizer
from training.run_paths import resolve_paths
from training.state import create_train_state

DEFAULT_CONFIG = "quickstart"  # pretrain_jax.py's default
PROBE_PREFIX = ".preflight-"


class CheckFailed(Exception):
    """A failed check; the message says what is wrong and how to fix it."""


@dataclass
class Report:
    prefix: str = ""
    failed: list[str] = field(default_factory=list)

    def ok(self, name: str, detail: str) -> None:
        print(f"{self.prefix}ok   {name:<12} {detail}", flush=True)

    def fail(self, name: str, detail: str) -> None:
        self.failed.append(name)
        print(f"{self.prefix}FAIL {name:<12} {detail}", flush=True)

    def skip(self, name: str, detail: str) -> None:
        print(f"{self.prefix}--   {name:<12} {detail}", flush=True)

    def run(self, name: str, check: Callable[[], str]) -> bool:
        """Run a check that raises on failure; any exception is reported as its one-line message."""
        try:
            self.ok(name, check())
            return True
        except Exception as e:
            self.fail(name, _one_line(e))
            return False


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, CheckFailed) else f"{type(e).__name__}: {text}"


def _multi() -> bool:
    return jax.process_count() > 1


# ---------------------------------------------------------------- config, processes, devices


def load_config(config_name: str, overrides: list[str]) -> PretrainConfig:
    return validate(apply_smoke(compose(config_name, overrides)))


def _expected_processes(cfg: PretrainConfig, expect: int | None) -> int | None:
    if expect is not None:
        return expect
    if cfg.distributed.num_processes is not None:
        return cfg.distributed.num_processes
    env = os.environ.get("TRM_NUM_PROCESSES")
    return int(env) if env else None


def check_devices(cfg: PretrainConfig, *, platform: str | None, processes: int | None, devices: int | None) -> str:
    backend, n_proc, n_dev = jax.default_backend(), jax.process_count(), jax.device_count()
    problems = []
    if platform and backend != platform:
        problems.append(
            f"JAX runs on {backend}, expected {platform}: install the {platform} requirements "
            f"(requirements-{platform if platform != 'gpu' else 'cuda'}.txt) and check no other process holds the chips"
        )
    if processes is not None and n_proc != processes:
        problems.append(
            f"{n_proc} processes joined, expected {processes}: start this on every worker with the same coordinator"
        )
    if devices is not None and n_dev != devices:
        problems.append(f"{n_dev} devices in all, expected {devices}")
    per_process = Counter(d.process_index for d in jax.devices())
    if len(set(per_process.values())) > 1:
        problems.append(f"processes see different device counts {dict(per_process)}: check each worker's accelerators")
    try:
        cfg.check_devices(n_dev)
    except ValueError as e:
        problems.append(str(e))
    if cfg.global_batch_size % n_proc:
        problems.append(f"global_batch_size={cfg.global_batch_size} does not split over {n_proc} processes")
    if problems:
        raise CheckFailed("; ".join(problems))
    rows = cfg.global_batch_size // cfg.grad_accum_steps // n_dev
    return f"{n_dev} {backend} devices on {n_proc} process(es), {rows} rows per device per micro-batch"


# ---------------------------------------------------------------- data


def _check_dataset(path: str, split: str) -> dict:
    """The split's metadata, after checking that every array file it names exists."""
    meta = load_metadata(path, split)
    fs, root = fsspec.core.url_to_fs(f"{path.rstrip('/')}/{split}")
    missing = [
        f"{set_name}__{f}.npy"
        for set_name in meta.sets
        for f in TOKEN_FIELDS + INDEX_FIELDS
        if not fs.exists(f"{root}/{set_name}__{f}.npy")
    ]
    if missing:
        raise CheckFailed(f"{path}/{split} lacks {missing}: rebuild the dataset (dataset/build_*.py) or copy it again")
    return meta.model_dump()


def _dataset_paths(cfg: PretrainConfig) -> list[tuple[str, str]]:
    """(path, split) pairs the run reads: evaluation uses data_paths_test, else the test splits
    of data_paths where they exist (on gs:// they must)."""
    pairs = [(p, "train") for p in cfg.data_paths]
    if cfg.data_paths_test:
        return pairs + [(p, "test") for p in cfg.data_paths_test]
    return pairs + [(p, "test") for p in cfg.data_paths if "://" in p or os.path.isdir(os.path.join(p, "test"))]


def _missing_but_generated(cfg: PretrainConfig, path: str) -> bool:
    return (
        cfg.data_generator is not None and path == cfg.data_paths[0] and "://" not in path and not os.path.exists(path)
    )


def check_data(cfg: PretrainConfig) -> tuple[bool, dict[str, dict] | None, str]:
    """(ok, metadata by path:split or None, detail). Collective with several processes."""
    metas: dict[str, dict] = {}
    problems = []
    for path, split in _dataset_paths(cfg):
        if _missing_but_generated(cfg, path):
            continue
        try:
            metas[f"{path}:{split}"] = _check_dataset(path, split)
        except Exception as e:
            problems.append(_one_line(e))
    try:
        distributed.assert_consistent("dataset metadata", {"metadata": metas, "problems": problems})
    except Exception as e:
        problems.append(_one_line(e))
    if problems:
        return False, None, "; ".join(problems)
    if not metas:
        return True, None, f"{cfg.data_paths[0]} is generated at start-up (data_generator={cfg.data_generator})"
    first = next(iter(metas.values()))
    detail = f"{len(metas)} split(s), seq_len {first['seq_len']}, vocab {first['vocab_size']}"
    return True, metas, detail + (", same metadata on every process" if _multi() else "")


# ---------------------------------------------------------------- storage


def _probe_name(directory: str, token: str, process: int) -> str:
    return f"{directory.rstrip('/')}/{PROBE_PREFIX}{token}-p{process}"


def _payload(token: str, process: int) -> bytes:
    return f"trm-jax preflight {token} process {process} on {socket.gethostname()}\n".encode()


def _shared_token() -> str:
    """A fresh name every process agrees on (process 0's)."""
    token = np.frombuffer(uuid.uuid4().hex[:16].encode(), np.uint8)
    if _multi():
        token = multihost_utils.broadcast_one_to_all(token)
    return bytes(np.asarray(token, np.uint8)).decode()


def _barrier(name: str) -> None:
    if _multi():
        multihost_utils.sync_global_devices(name)


def check_writable(directory: str, *, shared: bool) -> str:
    """Write this process's probe, read it back, and (if `shared`) read every other process's
    probe too; then delete that probe and the empty directories made for it. Collective when
    `shared`: every process reaches the same barriers whatever fails locally."""
    token = _shared_token() if shared else uuid.uuid4().hex[:16]
    me = jax.process_index()
    problems, own, made = [], None, []
    try:
        fs, root = fsspec.core.url_to_fs(directory)
        if "://" not in directory:
            made = _missing_dirs(root)
            fs.makedirs(root, exist_ok=True)
        fs.pipe_file(_probe_name(root, token, me), _payload(token, me))
        own = _probe_name(root, token, me)
        if fs.cat_file(own) != _payload(token, me):
            problems.append(f"{directory}: a probe object read back different bytes")
    except Exception as e:
        problems.append(f"cannot write {directory} ({_one_line(e)})")
    if shared:
        _barrier("preflight-probes-written")
        if own is not None:
            problems += _unseen_peers(fs, root, token, directory)
        _barrier("preflight-probes-read")
    if own is not None:
        fs.rm_file(own)
    if shared:
        _barrier("preflight-probes-deleted")
    _remove_empty(made)
    if problems:
        raise CheckFailed("; ".join(problems) + "; " + _storage_fix(directory))
    seen = f", shared by all {jax.process_count()} processes" if shared and _multi() else ""
    return f"{directory} writable{seen}"


def _missing_dirs(path: str) -> list[str]:
    """The directories makedirs(path) would create, deepest first."""
    missing = []
    path = os.path.abspath(path)
    while not os.path.exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def _remove_empty(dirs: list[str]) -> None:
    """rmdir only: a directory that holds anything (another process's files, a concurrent run's
    checkpoints) stays, and so do its parents."""
    for d in dirs:
        try:
            os.rmdir(d)
        except FileNotFoundError:
            continue  # another process sharing the file system removed it first
        except OSError:
            return


def _unseen_peers(fs, root: str, token: str, directory: str) -> list[str]:
    unseen = []
    for peer in range(jax.process_count()):
        try:
            if fs.cat_file(_probe_name(root, token, peer)) != _payload(token, peer):
                unseen.append(peer)
        except Exception:
            unseen.append(peer)
    if unseen:
        return [f"the probes of processes {unseen} are not visible in {directory}: it is not storage they share"]
    return []


def _storage_fix(directory: str) -> str:
    if "://" in directory:
        return (
            "check that the bucket exists and that this VM's service account may create and delete objects in it "
            "(e.g. roles/storage.objectAdmin)"
        )
    return (
        "point checkpoint_root (or run_dir) at a writable location; "
        "with several hosts use gs:// or a file system they share"
    )


# ---------------------------------------------------------------- disk


def checkpoint_bytes(cfg: PretrainConfig, dims: ModelDims) -> int:
    """Bytes of one checkpoint: the train state (parameters, optimizer state, EMA, puzzle
    embedding, ...) and the ACT carry, from their shapes; nothing is allocated."""
    model = TRMInner(cfg.arch, dims)
    tx = build_optimizer(cfg, total_steps=1)
    shapes = jax.eval_shape(
        lambda: (
            create_train_state(cfg, model, tx, dims.num_puzzle_identifiers),
            initial_carry(model, cfg.global_batch_size),
        )
    )
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(shapes))


def _model_dims(metas: dict[str, dict], cfg: PretrainConfig) -> ModelDims:
    train = [metas[f"{p}:train"] for p in cfg.data_paths]
    return ModelDims(train[0]["vocab_size"], train[0]["seq_len"], sum(m["num_puzzle_identifiers"] for m in train))


def _existing_ancestor(path: str) -> str:
    missing = _missing_dirs(path)
    return os.path.dirname(missing[-1]) if missing else os.path.abspath(path)


def _remote_dataset_bytes(cfg: PretrainConfig) -> int:
    total = 0
    for path, split in [(p, s) for p, s in _dataset_paths(cfg) if "://" in p]:
        fs, root = fsspec.core.url_to_fs(f"{path.rstrip('/')}/{split}")
        if fs.exists(root):
            total += fs.du(root)
    return total


def check_disk(cfg: PretrainConfig, metas: dict[str, dict], checkpoint_dir: str) -> str:
    per_ckpt = checkpoint_bytes(cfg, _model_dims(metas, cfg))
    needs: dict[int, list] = {}  # filesystem -> [a path on it, bytes needed, what for]

    def need(path: str, nbytes: int, what: str) -> None:
        where = _existing_ancestor(path)
        entry = needs.setdefault(os.stat(where).st_dev, [where, 0, []])
        entry[1] += nbytes
        entry[2].append(what)

    if "://" not in checkpoint_dir:
        need(checkpoint_dir, per_ckpt * (cfg.max_to_keep + 1), f"{cfg.max_to_keep + 1} checkpoints")
    remote = _remote_dataset_bytes(cfg)
    if remote:
        need(tempfile.gettempdir(), remote, "the local copy of the gs:// datasets")
    lines = [
        (
            shutil.disk_usage(where).free >= nbytes,
            f"{where}: {_size(shutil.disk_usage(where).free)} free, needs {_size(nbytes)} for {' and '.join(whats)}",
        )
        for where, nbytes, whats in needs.values()
    ]
    short = [text for enough, text in lines if not enough]
    if short:
        raise CheckFailed(
            "; ".join(short) + "; free space, lower max_to_keep, or put checkpoints on gs:// (checkpoint_root=gs://...)"
        )
    room = "; ".join(text for _, text in lines) or "nothing is stored on local disk"
    return f"one checkpoint is {_size(per_ckpt)}; {room}"


def _size(nbytes: int) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"


# ---------------------------------------------------------------- W&B


def check_wandb(cfg: PretrainConfig) -> str:
    if cfg.wandb.mode != "online":
        return f"wandb.mode={cfg.wandb.mode}: no credentials needed"
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        raise CheckFailed("wandb.mode=online but the wandb package is not installed: pip install wandb")
    if os.environ.get("WANDB_API_KEY"):
        return "WANDB_API_KEY is set"
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        if netrc.netrc(path).authenticators(host):
            return f"{path} has an entry for {host}"
    except (FileNotFoundError, netrc.NetrcParseError):
        pass
    raise CheckFailed(
        f"wandb.mode=online but no W&B credentials: neither WANDB_API_KEY nor an entry for {host} in {path}; "
        "run `wandb login` on every worker (or export WANDB_API_KEY), or set wandb.mode=offline"
    )


# ---------------------------------------------------------------- main


@dataclass(frozen=True)
class Expectations:
    platform: str | None
    processes: int | None
    devices: int | None


def run_checks(cfg: PretrainConfig, expect: Expectations, report: Report) -> None:
    """Every check after config and start-up; collectives run on every process whatever the
    local outcome, so one failing process cannot leave the others waiting."""
    processes = _expected_processes(cfg, expect.processes)
    report.run(
        "devices", lambda: check_devices(cfg, platform=expect.platform, processes=processes, devices=expect.devices)
    )
    ok, metas, detail = check_data(cfg)
    (report.ok if ok else report.fail)("data", detail)
    paths = resolve_paths(cfg)
    report.run("checkpoints", lambda: check_writable(paths.checkpoint_dir, shared=True))
    if jax.process_index() == 0:
        report.run("run_dir", lambda: check_writable(paths.run_dir, shared=False))
    else:
        report.skip("run_dir", "process 0 writes it")
    if metas is None:
        report.skip("disk", "checkpoint size unknown without the dataset metadata")
    else:
        report.run("disk", lambda: check_disk(cfg, metas, paths.checkpoint_dir))
    if jax.process_index() == 0:
        report.run("wandb", lambda: check_wandb(cfg))
    else:
        report.skip("wandb", "process 0 logs to W&B")


def _same_config(cfg: PretrainConfig) -> str:
    distributed.assert_consistent("resolved config", {"config": cfg.model_dump()})
    return f"{jax.process_count()} processes joined, with the same resolved config"


def _failures_everywhere(report: Report) -> list[int]:
    """Processes with at least one failed check."""
    counts = np.array([len(report.failed)], np.int32)
    if _multi():
        counts = np.asarray(multihost_utils.process_allgather(counts)).reshape(-1)
    return [int(i) for i in np.flatnonzero(counts)]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-name", "-cn", default=DEFAULT_CONFIG)
    parser.add_argument("--expect-platform", choices=("tpu", "gpu", "cpu"), default=None)
    parser.add_argument("--expect-processes", type=int, default=None, help="default: the run's distributed settings")
    parser.add_argument("--expect-devices", type=int, default=None, help="total over all processes")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for pretrain_jax.py")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    report = Report()
    try:
        cfg = load_config(args.config_name, args.overrides)
    except Exception as e:
        report.fail("config", _one_line(e))
        return 1
    report.ok("config", f"{args.config_name}: {cfg.experiment_group}/{cfg.experiment_name}")
    try:
        distributed.initialize(cfg.distributed)
    except Exception as e:
        report.fail("distributed", _one_line(e))
        return 1
    if _multi():
        report.prefix = f"[process {jax.process_index()}/{jax.process_count()} {socket.gethostname()}] "
        report.run("distributed", lambda: _same_config(cfg))
    run_checks(cfg, Expectations(args.expect_platform, args.expect_processes, args.expect_devices), report)
    failing = _failures_everywhere(report)
    if failing:
        print(f"{report.prefix}preflight FAILED on process(es) {failing}", flush=True)
        return 1
    print(f"{report.prefix}preflight passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
