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
import numpy as np
import orbax.checkpoint as ocp

from training.config import ConfigError, PretrainConfig

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


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class Checkpointer:
    """Owns a run's checkpoints and its saving policy: every eval interval (the official
    `checkpoint_every_eval`), every `checkpoint_every_steps`, and the final step."""

    def __init__(self, directory: str, cfg: PretrainConfig, *, steps_per_eval: int):
        self.directory = directory
        self.cfg = cfg
        self.steps_per_eval = steps_per_eval
        options = ocp.CheckpointManagerOptions(max_to_keep=cfg.max_to_keep, enable_async_checkpointing=True)
        self.manager = with_retries(
            lambda: ocp.CheckpointManager(directory, options=options, item_names=("state", "meta")),
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
        meta = dict(meta, step=step, config=self.cfg.model_dump(), config_hash=self.cfg.hash())
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave({"state": state, "carry": carry}), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )

    def steps(self) -> list[int]:
        return sorted(with_retries(self.manager.all_steps, f"listing {self.directory}"))

    def _check_compatible(self, meta: dict[str, Any], step: int) -> None:
        saved = meta.get("config", {}).get("arch", {})
        ours = self.cfg.arch.model_dump()
        # Cycle counts and halting limits may change between runs; the weights still fit.
        shape_keys = (
            "hidden_size",
            "num_heads",
            "expansion",
            "L_layers",
            "mlp_t",
            "pos_encodings",
            "puzzle_emb_ndim",
            "puzzle_emb_len",
        )
        diff = {k: (saved.get(k), ours[k]) for k in shape_keys if saved.get(k) != ours[k]}
        if diff:
            raise ConfigError(
                f"checkpoint step {step} in {self.directory} has a different architecture {diff} (saved, ours). "
                "Point run_dir/checkpoint_root at a fresh location, "
                "or use load_checkpoint= only with a compatible model."
            )

    def restore_latest(self, state, carry) -> tuple[Any, Any, dict[str, Any]] | None:
        """(state, carry, meta) of the newest readable step, or None if there is none.

        Unreadable steps newer than that are deleted: the run retrains them, and Orbax would
        refuse to save over them (or the final save would be skipped as already present)."""
        broken = []
        restored = None
        for step in reversed(self.steps()):
            try:
                meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            except Exception as e:  # corrupt metadata: fall back to an older step
                log.warning(
                    "checkpoint step %d in %s is unreadable (%s); trying the previous one", step, self.directory, e
                )
                broken.append(step)
                continue
            self._check_compatible(meta, step)
            try:
                target = {"state": _abstract(state), "carry": _abstract(carry)}
                item = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))[
                    "state"
                ]
            except Exception as e:
                log.warning(
                    "checkpoint step %d in %s is unreadable (%s); trying the previous one", step, self.directory, e
                )
                broken.append(step)
                continue
            restored = item["state"], item["carry"], meta
            break
        for step in broken:
            log.warning("deleting unreadable checkpoint step %d in %s", step, self.directory)
            self.manager.delete(step)
        return restored

    def last_good(self) -> str:
        """Where a user continues from, for error messages."""
        steps = self.steps()
        if not steps:
            return f"no checkpoint has been written to {self.directory} yet"
        return f"the last good checkpoint is step {steps[-1]} in {self.directory}"

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def load_weights(path: str, state, cfg: PretrainConfig):
    """`load_checkpoint=PATH`: start from saved weights with a fresh optimizer and data stream.

    PATH is a checkpoint directory of this project (its newest step, or a step directory) or an
    `.npz` of an official PyTorch state_dict (see models/torch_import.py). A puzzle-embedding
    table whose size differs is re-initialised to its mean row, as the official code does.
    """
    if path.endswith(".npz"):
        from models.torch_import import import_state_dict

        params, buffers, table = import_state_dict(
            dict(np.load(path)), {"params": state.params, "buffers": state.buffers}
        )
    else:
        manager = ocp.CheckpointManager(path, item_names=("state", "meta"))
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"load_checkpoint={path}: no checkpoint steps found there")
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]["state"]
        params, buffers, table = restored["params"], restored["buffers"], np.asarray(restored["puzzle_emb"])
    if table is not None and table.shape != state.puzzle_emb.shape:
        log.warning(
            "resetting puzzle embedding: checkpoint has %s, this dataset needs %s", table.shape, state.puzzle_emb.shape
        )
        table = np.broadcast_to(table.mean(0, keepdims=True), state.puzzle_emb.shape)
    put = lambda new, old: jax.device_put(np.asarray(new, dtype=old.dtype).reshape(old.shape), old.sharding)
    state = state.replace(
        params=jax.tree.map(put, params, state.params), buffers=jax.tree.map(put, buffers, state.buffers)
    )
    if table is not None:
        state = state.replace(puzzle_emb=put(table, state.puzzle_emb))
    if cfg.ema:
        state = state.replace(ema_params=jax.tree.map(lambda x: x.copy(), state.params))
    return state
