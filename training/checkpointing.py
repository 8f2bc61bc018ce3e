"""Orbax checkpoints (local directory or gs://) that hold everything needed to continue exactly.

A checkpoint step directory holds two items:
  state - the TrainState (params, optimizer states, puzzle embedding, EMA, step, RNG, loss
          scale) and the ACT carry, as arrays with their shardings;
  meta  - JSON: the data-sampler position, the resolved config and its hash, epochs done.
Orbax writes each step to a temporary directory and renames it when complete, so a save
interrupted by a crash never shows up as a step; a step that is present but unreadable is
skipped with a warning in favour of the previous one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from training.config import PretrainConfig
from training.state import all_finite

log = logging.getLogger(__name__)
T = TypeVar("T")


def with_retries(fn: Callable[[], T], what: str, attempts: int = 4, base_delay: float = 1.0) -> T:
    """Retry flaky storage operations (gs://) with exponential backoff, then re-raise clearly."""
    for i in range(attempts):
        try:
            return fn()
        except (OSError, ConnectionError, TimeoutError) as e:
            if i == attempts - 1:
                raise OSError(f"{what} failed after {attempts} attempts: {e}") from e
            delay = base_delay * 2**i
            log.warning("%s failed (%s); retrying in %.0fs", what, e, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _leaf_shapes(tree) -> dict[str, tuple[tuple[int, ...], str]]:
    def name(k) -> str:
        return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))

    leaves = jax.tree.flatten_with_path(tree)[0]
    return {"/".join(map(name, path)): (tuple(x.shape), str(x.dtype)) for path, x in leaves}


def shape_differences(saved, wanted) -> list[str]:
    """Leaves of a checkpoint's array metadata that differ from `wanted` (arrays or shape
    structs), by path: shape or dtype, or present on one side only."""
    a, b = _leaf_shapes(saved), _leaf_shapes(wanted)
    out = [
        f"{k}: saved {a[k][0]} {a[k][1]}, now {b[k][0]} {b[k][1]}" for k in sorted(a.keys() & b.keys()) if a[k] != b[k]
    ]
    out += [f"{k}: only in the checkpoint" for k in sorted(a.keys() - b.keys())]
    return out + [f"{k}: not in the checkpoint" for k in sorted(b.keys() - a.keys())]


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used or written; the message says why and what to do."""


# Config keys whose change keeps a checkpoint meaningful: schedules, cadences, names, logging,
# process layout (the data order depends only on the global batch). Every other key changes a
# stored shape or what the state means (batch, architecture, optimizer, EMA, dtype, data, seed),
# so unknown new keys are incompatible by default.
RESUMABLE_KEYS = frozenset(
    {
        "lr", "lr_min_ratio", "lr_warmup_steps", "beta1", "beta2", "weight_decay", "puzzle_emb_lr",
        "puzzle_emb_weight_decay", "epochs", "eval_interval", "min_eval_interval", "max_steps", "grad_accum_steps",
        "nonfinite_loss", "stop_grace_seconds", "transfer_guard", "loss_scale_growth_interval",
        "experiment_group", "experiment_name", "run_dir", "checkpoint_root", "checkpoint_every_eval",
        "checkpoint_every_steps", "max_to_keep", "load_checkpoint", "log_every_steps", "resume", "data_paths_test",
        "evaluators", "data_generator", "curriculum", "halt_exploration_schedule", "wandb", "distributed",
        "arch.halt_exploration_prob", "arch.halt_max_steps", "arch.H_cycles", "arch.L_cycles", "arch.unroll_cycles",
        "arch.attention_impl", "arch.H_layers", "eval_save_outputs", "eval_subset", "peak_tflops",
    }
)  # fmt: skip


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v and f"{prefix}{k}" not in RESUMABLE_KEYS:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> tuple[dict, dict]:
    """(resumable, incompatible) differences between two resolved configs: key -> (saved, now)."""
    a, b = _flatten(saved), _flatten(current)
    # A knob added after the checkpoint was written, left at its off value, changes nothing.
    added_but_off = {k for k in b.keys() - a.keys() if b[k] in (None, False, [], {})}
    diff = {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys() - added_but_off) if a.get(k) != b.get(k)}
    resumable = {k: v for k, v in diff.items() if k in RESUMABLE_KEYS}
    return resumable, {k: v for k, v in diff.items() if k not in resumable}


def _checksum(x: jax.Array) -> jax.Array:
    """Position-weighted sum of the raw bits mod 2^32: exact, independent of reduction order and
    sharding, and any change of one element changes it (odd weights are invertible mod 2^32)."""
    bits = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
    x = x.astype(jnp.uint8) if x.dtype == jnp.bool_ else x
    words = jax.lax.bitcast_convert_type(x, bits).astype(jnp.uint32)
    weights = 2 * jnp.arange(words.size, dtype=jnp.uint32).reshape(words.shape) + 1
    return jnp.sum(words * weights, dtype=jnp.uint32)


@jax.jit
def checksums(tree) -> list[jax.Array]:
    return [_checksum(x) for x in jax.tree.leaves(tree)]


_all_finite = jax.jit(all_finite)


class Checkpointer:
    """Owns a run's checkpoints: when to save (every eval interval, the official
    `checkpoint_every_eval`; every `checkpoint_every_steps`; the final step), what a step holds
    (state, carry, and meta: sampler position, config, run id, array checksums) and whether a
    step may be resumed. It never deletes a step that a user could want: Orbax removes only
    steps beyond `max_to_keep` after a newer one is committed, and a step that cannot be used is
    moved aside into `<checkpoint dir>-quarantine/` with the reason next to it."""

    def __init__(
        self, directory: str, cfg: PretrainConfig, *, steps_per_eval: int, run_id: str, dataset: dict[str, Any]
    ):
        self.directory = directory
        self.cfg = cfg
        self.steps_per_eval = steps_per_eval
        self.run_id = run_id
        self.dataset = dataset  # the training set's dataset.json: a rebuilt dataset is not resumed
        self._writing: int | None = None  # the step whose background write is not yet confirmed
        options = ocp.CheckpointManagerOptions(max_to_keep=cfg.max_to_keep, enable_async_checkpointing=True)
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self.manager = with_retries(
            lambda: ocp.CheckpointManager(directory, options=options, item_handlers=handlers),
            f"opening checkpoint directory {directory}",
        )

    def is_due(self, step: int, *, final: bool) -> bool:
        every = self.cfg.checkpoint_every_steps
        interval_end = self.cfg.checkpoint_every_eval and step % self.steps_per_eval == 0
        return final or interval_end or bool(every and step % every == 0)

    def save(self, step: int, state, carry, meta: dict[str, Any]) -> None:
        """Asynchronous: returns once the arrays are copied off the devices. A step that is
        already saved (a periodic save just before a stop) is not written twice."""
        if step in self.steps():
            return
        self.wait()
        # The state is checked before it is written: a checkpoint of inf/NaN weights would pass
        # every later check (its checksums match) and poison each resume.
        if not bool(_all_finite(state)):
            raise CheckpointError(f"step {step} was not saved: its weights or optimizer state are non-finite")
        tree = {"state": state, "carry": carry}
        meta = dict(
            meta,
            step=step,
            config=self.cfg.model_dump(),
            config_hash=self.cfg.hash(),
            run_id=self.run_id,
            dataset=self.dataset,
            checksums=[int(c) for c in jax.device_get(checksums(tree))],
        )
        args = ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta))
        try:
            self.manager.save(step, args=args, force=True)
        except Exception as e:
            raise CheckpointError(f"saving step {step} to {self.directory} failed: {_first_line(e)}") from e
        self._writing = step

    def raise_failed_write(self) -> None:
        """Called every step: a background write that failed (a full disk) stops the run at the
        next step instead of at the next save. Never blocks: it only looks at a finished write."""
        if self._writing is not None and not self.manager.is_saving_in_progress():
            self.wait()

    def steps(self) -> list[int]:
        return sorted(with_retries(self.manager.all_steps, f"listing {self.directory}"))

    def restore_latest(self, state, carry, *, strict: bool = False) -> tuple[Any, Any, dict[str, Any]] | None:
        """(state, carry, meta) of the newest usable step, None when there is none (or
        `resume=never`, which refuses a directory with steps). Compatibility is decided from
        the step's meta before any array is read; `strict` (a Hydra sweep) refuses any change."""
        resume = self.cfg.resume
        steps = self.steps()
        if steps and resume == "never":
            raise CheckpointError(
                f"resume=never, but {self.directory} already holds steps {steps}: use a new run_dir (or "
                "checkpoint_root), or resume=auto to continue them"
            )
        for step in reversed(steps):
            read = self._read(
                step, "metadata", self.manager.restore, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            )
            if read is None:
                continue
            meta = read["meta"]
            self._check_resumable(meta, step, strict=strict)
            target = {"state": _abstract(state), "carry": _abstract(carry)}
            saved = self._read(step, "array metadata", self.manager.item_metadata)
            if saved is None:
                continue
            self._check_shapes(saved["state"], target, step)
            read = self._read(
                step, "arrays", self.manager.restore, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
            )
            if read is None:
                continue
            item = read["state"]
            if "checksums" in meta and [int(c) for c in jax.device_get(checksums(item))] != meta["checksums"]:
                self._quarantine(step, "its arrays do not match the checksums saved with them (corrupted data)")
                continue
            return item["state"], item["carry"], meta
        if resume == "must":
            raise CheckpointError(f"resume=must, but {self.directory} holds no usable checkpoint")
        return None

    def _read(self, step: int, what: str, fn: Callable[..., T], **kwargs) -> T | None:
        """`fn(step, **kwargs)`, or None after moving the step aside when it cannot be read. On gs:// a failed
        read is retried first: a transient storage error must not cost a good step."""
        attempts = 3 if self.directory.startswith("gs://") else 1
        for i in range(attempts):
            try:
                return fn(step, **kwargs)
            except Exception as e:
                error = e
                if i < attempts - 1:
                    log.warning("reading the %s of step %d failed (%s); retrying", what, step, _first_line(e))
                    time.sleep(2**i)
        self._quarantine(step, f"its {what} cannot be read ({_first_line(error)})")
        return None

    def _ways_out(self) -> str:
        return (
            "Either train in a new run_dir (run_dir=NEW_DIR), or start a new run from these weights: "
            f"run_dir=NEW_DIR load_checkpoint={self.directory}"
        )

    def _check_shapes(self, saved, target, step: int) -> None:
        """Arrays that no longer fit (a dataset rebuilt at the same path with other sizes) make
        the step incompatible, not unreadable: refused before any array is read."""
        differences = shape_differences(saved, target)
        if differences:
            raise CheckpointError(
                f"cannot resume checkpoint step {step} in {self.directory}: its arrays do not fit this run "
                f"({'; '.join(differences[:4])}): the dataset or the code changed shapes. {self._ways_out()}"
            )

    def _check_resumable(self, meta: dict[str, Any], step: int, *, strict: bool) -> None:
        where = f"checkpoint step {step} in {self.directory}"
        ways_out = self._ways_out()
        if meta.get("run_id", self.run_id) != self.run_id:
            raise CheckpointError(
                f"{where} belongs to another run (run id {meta['run_id']}, this run_dir's is {self.run_id}): two "
                f"runs share this checkpoint directory. {ways_out}"
            )
        if meta.get("dataset", self.dataset) != self.dataset:
            changed = config_changes(meta["dataset"], self.dataset)[1]
            changes = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise CheckpointError(
                f"cannot resume {where}: the training data's dataset.json changed since it was saved ({changes}): "
                f"the dataset at data_paths was rebuilt. {ways_out}"
            )
        resumable, incompatible = config_changes(meta.get("config", {}), self.cfg.model_dump())
        if strict:
            resumable, incompatible = {}, {**incompatible, **resumable}
        if incompatible:
            changes = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in incompatible.items())
            why = "a sweep job must not resume another job's state" if strict else "they change the saved state"
            raise CheckpointError(f"cannot resume {where}: {why}: {changes}. {ways_out}")
        for k, (old, new) in resumable.items():
            log.warning("resuming %s with %s changed: %r -> %r", where, k, old, new)

    def _quarantine(self, step: int, reason: str) -> None:
        """Move an unusable step aside (never delete it), so that the run can retrain and save
        that step number again; the reason is written next to it."""
        src = epath.Path(self.directory) / str(step)
        dest_dir = epath.Path(f"{self.directory.rstrip('/')}-quarantine")
        dest = dest_dir / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        if jax.process_index() == 0:
            dest_dir.mkdir(parents=True, exist_ok=True)
            src.rename(dest)
            (dest_dir / f"{dest.name}.reason.txt").write_text(f"checkpoint step {step}: {reason}\n")
        multihost_utils.sync_global_devices(f"quarantine {step}")
        self.manager.reload()
        log.warning("checkpoint step %d in %s is unusable: %s; moved to %s", step, self.directory, reason, dest)

    def last_good(self) -> str:
        """Where a user continues from, for error messages."""
        steps = self.steps()
        if not steps:
            return f"no checkpoint has been written to {self.directory} yet"
        return f"the last good checkpoint is step {steps[-1]} in {self.directory}"

    def wait(self) -> None:
        step, self._writing = self._writing, None
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            what = "a checkpoint" if step is None else f"checkpoint step {step}"
            raise CheckpointError(f"writing {what} to {self.directory} failed: {_first_line(e)}") from e

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()


def _first_line(e: BaseException) -> str:
    """Tensorstore's messages put the path first and the cause (`No space left on device`) last,
    so a long line keeps both ends."""
    line = (str(e).strip() or type(e).__name__).splitlines()[0]
    return line if len(line) <= 400 else f"{line[:150]} ... {line[-250:]}"


def load_weights(path: str, state, cfg: PretrainConfig):
    """`load_checkpoint=PATH`: start from saved weights with a fresh optimizer and data stream.

    PATH is a checkpoint directory of this project (its newest step), one step directory of it
    (a quarantined one too), or an `.npz` of an official PyTorch state_dict (see
    models/torch_import.py). A puzzle-embedding table whose size differs is re-initialised to its
    mean row, as the official code does.
    Nothing is created at PATH: a missing path is an error.
    """
    if not epath.Path(path).exists():
        raise CheckpointError(f"load_checkpoint={path}: no such file or directory")
    if path.endswith(".npz"):
        from models.torch_import import import_state_dict

        try:
            params, buffers, table = import_state_dict(
                dict(np.load(path)), {"params": state.params, "buffers": state.buffers}
            )
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"load_checkpoint={path} does not fit this architecture: {_first_line(e)}") from e
    else:
        params, buffers, table = _saved_weights(path, state)
    if table is not None and table.shape != state.puzzle_emb.shape:
        log.warning(
            "resetting puzzle embedding: checkpoint has %s, this dataset needs %s", table.shape, state.puzzle_emb.shape
        )
        table = np.broadcast_to(table.mean(0, keepdims=True), state.puzzle_emb.shape)
    put = lambda new, old: jax.device_put(np.asarray(new, dtype=old.dtype), old.sharding)  # noqa: E731
    state = state.replace(
        params=jax.tree.map(put, params, state.params), buffers=jax.tree.map(put, buffers, state.buffers)
    )
    if table is not None:
        state = state.replace(puzzle_emb=put(table, state.puzzle_emb))
    # Every EMA the run keeps (the primary one and the ema_rates shadows) starts at the loaded weights.
    state = state.restart_ema()
    return state


def _saved_weights(path: str, state) -> tuple[Any, Any, np.ndarray]:
    """params, buffers and puzzle table of this project's checkpoint at `path` (a manager
    directory, one of its step directories, or a quarantined step), checked against `state`'s shapes."""
    item = _state_item(path)
    handler = ocp.StandardCheckpointHandler()
    try:
        saved = handler.metadata(item)["state"]
        want = {"params": state.params, "buffers": state.buffers}
        mismatched = shape_differences({k: saved[k] for k in want}, want)
        if mismatched:
            raise CheckpointError(
                f"load_checkpoint={path} is a checkpoint of another architecture: "
                f"{', '.join(mismatched[:5])}; pick a checkpoint of this model's arch"
            )
        restored = handler.restore(item)["state"]
    finally:
        handler.close()
    return restored["params"], restored["buffers"], np.asarray(restored["puzzle_emb"])


def _state_item(path: str) -> epath.Path:
    """The `state` item directory of the step at `path`: a step directory (its name need not be a
    number, so a quarantined step loads too), or the newest step of a checkpoint directory."""
    p = epath.Path(path)
    if (p / "state").is_dir():
        return p / "state"
    with ocp.CheckpointManager(p) as manager:
        step = manager.latest_step()
    if step is None:
        raise CheckpointError(f"load_checkpoint={path}: no checkpoint step found there")
    return p / str(step) / "state"
