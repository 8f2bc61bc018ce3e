"""Export a trained run's weights as an official PyTorch TRM state_dict.

    python scripts/export_official.py runs/quickstart/sudoku4 trm.npz
    python scripts/export_official.py gs://BUCKET/trm/GROUP/NAME trm.pt --step 2000 --raw

SOURCE is a run directory, its checkpoint directory, one step directory of it, or such a
directory on gs://. The newest step is exported unless --step says otherwise, with the EMA
weights when the run kept them (`ema=true`) and the raw weights with --raw. Names and layout
are the official ones (`model.inner.*`, linear weights [out, in]); --compiled-names prefixes
`_orig_mod.` as the official training script's torch.compile'd model expects when it loads
`load_checkpoint=`. `.npz` needs only numpy; `.pt` needs torch, and without it the error gives
the one-line conversion of an `.npz` to `.pt` to run wherever torch is installed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from omegaconf import OmegaConf
from pydantic import ValidationError

from models.config import ArchConfig
from models.torch_import import BUFFERS, COMPILED_PREFIX, OFFICIAL_PREFIX, export_state_dict
from models.trm import ModelDims


class ExportError(ValueError):
    """Bad input to the export: the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class TrainedWeights:
    arch: ArchConfig
    config: dict[str, Any]  # the run's resolved config, as saved with the checkpoint
    variables: dict[str, Any]  # {"params", "buffers"}, numpy
    puzzle_emb: np.ndarray
    step: int
    checkpoint_dir: str
    ema: bool  # whether `variables["params"]` are the EMA weights
    seq_len: int  # tokens per puzzle, read from the saved ACT carry (no dataset needed)

    @property
    def dims(self) -> ModelDims:
        """The dataset-given sizes the weights were trained for."""
        vocab_size = self.variables["params"]["embed_tokens"]["embedding"].shape[0]
        return ModelDims(vocab_size, self.seq_len, self.puzzle_emb.shape[0])


def _is_local(path: str) -> bool:
    return "://" not in path


def _manager(directory: str) -> ocp.CheckpointManager:
    """Read-only: never creates the directory or touches what is in it."""
    options = ocp.CheckpointManagerOptions(create=False, read_only=True)
    handlers = {"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    # Orbax reads only absolute paths; messages keep the path as the user gave it.
    path = os.path.abspath(directory) if _is_local(directory) else directory
    return ocp.CheckpointManager(path, options=options, item_handlers=handlers)


def _steps(directory: str) -> list[int]:
    with _manager(directory) as manager:
        return sorted(manager.all_steps())


def _run_checkpoint_dir(run_dir: str) -> str | None:
    """Where a run directory's checkpoints are: <run_dir>/checkpoints, or under the
    checkpoint_root its config.yaml names."""
    if os.path.isdir(os.path.join(run_dir, "checkpoints")):
        return os.path.join(run_dir, "checkpoints")
    config_file = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(config_file):
        return None
    cfg = OmegaConf.load(config_file)
    root = cfg.get("checkpoint_root")
    if not root:
        raise ExportError(f"{run_dir} is a run directory without checkpoints yet (no checkpoints/ in it)")
    return "/".join([str(root).rstrip("/"), str(cfg.experiment_group), str(cfg.experiment_name)])


def locate_checkpoint(source: str, step: int | None = None) -> tuple[str, int]:
    """(checkpoint manager directory, step) for a run, checkpoint or step directory."""
    source = source.rstrip("/") or "/"
    if _is_local(source) and not os.path.exists(source):
        raise ExportError(f"{source}: no such run or checkpoint directory")
    directory = (_run_checkpoint_dir(source) if _is_local(source) else None) or source
    steps = _steps(directory)
    parent, name = directory.rsplit("/", 1) if "/" in directory else (".", directory)
    if not steps and name.isdigit() and int(name) in _steps(parent):
        directory, steps, step = parent, [int(name)], int(name) if step is None else step
    if not steps and directory != source:
        raise ExportError(f"{source} has no checkpoint yet: {directory} holds no steps")
    if not steps:
        raise ExportError(
            f"{source} is neither a run directory (no checkpoints/ or config.yaml) nor a checkpoint directory "
            "(no step subdirectories); pass runs/<group>/<name>, its checkpoints/ folder or one step folder"
        )
    if step is None:
        return directory, steps[-1]
    if step not in steps:
        raise ExportError(f"no step {step} in {directory}; available steps: {steps}")
    return directory, step


def load_trained_weights(source: str, *, step: int | None = None, raw: bool = False) -> TrainedWeights:
    """The evaluation weights of a saved step (EMA when the run kept them, unless `raw`), restored
    onto this process's first device whatever device layout wrote them. Reads only the weights,
    not the optimizer state or the ACT carry."""
    directory, step = locate_checkpoint(source, step)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    try:
        with _manager(directory) as manager:
            meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            ema = bool(meta["config"].get("ema")) and not raw
            saved_tree = manager.item_metadata(step)["state"]
            saved, seq_len = saved_tree["state"], saved_tree["carry"]["inputs"].shape[-1]
            wanted = {k: saved[k] for k in ("ema_params" if ema else "params", "buffers", "puzzle_emb")}
            target = {"state": jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), wanted)}
            restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device), target)
            item = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
                ),
            )["state"]["state"]
    except (OSError, KeyError, ValueError) as e:
        raise ExportError(f"cannot read checkpoint step {step} in {directory}: {e}") from e
    item = jax.tree.map(np.asarray, item)
    try:
        arch = ArchConfig.model_validate(meta["config"]["arch"])
    except ValidationError as e:
        problem = e.errors()[0]
        raise ExportError(
            f"checkpoint step {step} in {directory} describes an architecture this version cannot build "
            f"(arch.{'.'.join(map(str, problem['loc']))}: {problem['msg']})"
        ) from None
    return TrainedWeights(
        arch=arch,
        config=meta["config"],
        variables={"params": item["ema_params" if ema else "params"], "buffers": item["buffers"]},
        puzzle_emb=item["puzzle_emb"],
        step=step,
        checkpoint_dir=directory,
        ema=ema,
        seq_len=seq_len,
    )


def conversion_command(npz: str, pt: str, forward_dtype: str) -> str:
    """One shell line that turns an exported .npz into the official .pt (buffers in the model's
    forward dtype, as the official model holds them)."""
    buffers = "(" + ", ".join(json.dumps(b) for b in BUFFERS) + ")"
    code = (
        "import numpy as np, torch; "
        f"torch.save({{k: torch.from_numpy(v).to(torch.{forward_dtype} if k.endswith({buffers}) else torch.float32) "
        f"for k, v in np.load({json.dumps(npz)}).items()}}, {json.dumps(pt)})"
    )
    return f"python -c {shlex.quote(code)}"


def _write_npz(state_dict: dict[str, np.ndarray], f) -> None:
    np.savez(f, **state_dict)


def _torch_writer(forward_dtype: str, out: str):
    try:
        import torch
    except ImportError:
        npz = os.path.splitext(out)[0] + ".npz"
        raise ExportError(
            f"writing {out} needs torch, which is not installed here; export to {npz} instead and convert it "
            f"where torch is installed: {conversion_command(npz, out, forward_dtype)}"
        ) from None

    def write(state_dict: dict[str, np.ndarray], f) -> None:
        buffer_dtype = getattr(torch, forward_dtype)
        tensors = {
            k: torch.from_numpy(v).to(buffer_dtype if k.endswith(BUFFERS) else torch.float32)
            for k, v in state_dict.items()
        }
        torch.save(tensors, f)

    return write


def check_output(out: str, *, force: bool = False) -> None:
    """Fail before any work on an output that cannot or must not be written."""
    if not _is_local(out):
        raise ExportError(f"{out}: write the export to a local path, then copy it (e.g. gcloud storage cp)")
    if os.path.splitext(out)[1] not in (".npz", ".pt"):
        raise ExportError(f"{out}: the output must end in .npz or .pt")
    if os.path.exists(out) and not force:
        raise ExportError(f"{out} already exists; choose another name or pass --force to replace it")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise ExportError(f"{out}: directory {os.path.dirname(os.path.abspath(out))} does not exist")


def write_state_dict(state_dict: dict[str, np.ndarray], out: str, *, forward_dtype: str, force: bool = False) -> None:
    """Write `.npz` or `.pt` atomically: a failed export leaves no partial file, and an existing
    file is replaced only with `force`."""
    check_output(out, force=force)
    ext = os.path.splitext(out)[1]
    writer = _write_npz if ext == ".npz" else _torch_writer(forward_dtype, out)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(out)), prefix=".export-", suffix=ext)
    try:
        with os.fdopen(fd, "wb") as f:
            writer(state_dict, f)
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise


def export(
    source: str, out: str, *, step: int | None = None, raw: bool = False, compiled_names: bool = False, force=False
) -> tuple[TrainedWeights, dict[str, np.ndarray]]:
    """Write the official state_dict of a saved step to `out`; returns what was exported."""
    check_output(out, force=force)
    weights = load_trained_weights(source, step=step, raw=raw)
    prefix = (COMPILED_PREFIX if compiled_names else "") + OFFICIAL_PREFIX
    state_dict = export_state_dict(weights.variables, weights.puzzle_emb, prefix=prefix)
    write_state_dict(state_dict, out, forward_dtype=weights.arch.forward_dtype, force=force)
    return weights, state_dict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="run directory, checkpoint directory or step directory (local or gs://)")
    parser.add_argument("out", help="output file, .npz or .pt")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    parser.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA weights")
    parser.add_argument("--compiled-names", action="store_true", help=f"prefix every name with {COMPILED_PREFIX}")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    args = parser.parse_args(argv)
    # Orbax warns through absl about every read-only manager it opens.
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        weights, state_dict = export(
            args.source, args.out, step=args.step, raw=args.raw, compiled_names=args.compiled_names, force=args.force
        )
    except ExportError as e:
        print(f"export_official.py: error: {e}", file=sys.stderr)
        return 1
    which = "EMA" if weights.ema else "raw" if args.raw else "raw (the run kept no EMA weights)"
    print(
        f"wrote the {which} weights of step {weights.step} from {weights.checkpoint_dir} to {args.out} "
        f"({len(state_dict)} arrays, {sum(v.size for v in state_dict.values()):,} numbers)"
    )
    if args.out.endswith(".npz"):
        pt = os.path.splitext(args.out)[0] + ".pt"
        print(f"to make {pt} where torch is installed: {conversion_command(args.out, pt, weights.arch.forward_dtype)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
