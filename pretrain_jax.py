"""Train a Tiny Recursive Model.

    python pretrain_jax.py                          # quick start: small TRM, 4x4 Sudoku, CPU
    python pretrain_jax.py --config-name exp01a     # an experiment of the scaling study
    python pretrain_jax.py --config-name cfg_pretrain data_paths=[data/sudoku-extreme-1k-aug-1000] arch.mlp_t=true

Reads top to bottom: config -> distributed -> data -> mesh -> model and state -> resume ->
loop (train step, metrics one step late, evaluation, checkpoints) -> final save and summary.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from typing import Any

import hydra
import jax
import numpy as np
from jax.experimental import multihost_utils
from omegaconf import DictConfig

from dataset.puzzle_dataset import TrainSampler, eval_batches
from evaluators import create_evaluator
from models.act import initial_carry
from models.trm import ModelDims, build_model, num_parameters
from training import distributed
from training.checkpointing import Checkpointer, load_weights
from training.config import ConfigError, PretrainConfig, apply_smoke, validate
from training.data import open_datasets
from training.metrics_log import RunLogger, accumulate_train, reduce_eval, reduce_train
from training.optimizers import build_optimizer
from training.run_paths import resolve_paths
from training.schedules import halt_exploration_prob, recursion_depth
from training.sharding import Shardings, global_batch, local_rows, make_shardings
from training.state import create_train_state
from training.step import make_eval_step, make_train_step

log = logging.getLogger("pretrain")


class NonFiniteLossError(RuntimeError):
    pass


class Preemption:
    """SIGTERM (a preemption notice) asks for a final checkpoint. With several processes, JAX's
    preemption sync point makes every process stop at the same step."""

    def __init__(self):
        self.requested = False
        if jax.process_count() == 1:
            signal.signal(signal.SIGTERM, lambda *_: setattr(self, "requested", True))

    def should_stop(self, step: int) -> bool:
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested


def peak_memory_bytes() -> int | None:
    stats = jax.local_devices()[0].memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


class Trainer:
    """Holds the compiled steps (one per recursion depth) and runs evaluation."""

    def __init__(
        self,
        cfg: PretrainConfig,
        model,
        tx,
        total_steps: int,
        sh: Shardings,
        state_sharding,
        carry_sharding,
        test_ds,
        evaluators,
    ):
        self.cfg, self.model, self.tx, self.total_steps, self.sh = cfg, model, tx, total_steps, sh
        self.shardings = (state_sharding, carry_sharding)
        self.test_ds, self.evaluators = test_ds, evaluators
        self._train, self._eval = {}, {}

    def train_fn(self, H: int, L: int):
        if (H, L) not in self._train:
            self._train[(H, L)] = make_train_step(
                self.cfg, self.model, self.tx, self.total_steps, self.sh, H, L, *self.shardings
            )
        return self._train[(H, L)]

    def evaluate(self, state, H: int, L: int, save_dir: str) -> dict[str, Any]:
        if (H, L) not in self._eval:
            self._eval[(H, L)] = make_eval_step(self.cfg, self.model, self.sh, H, L)
        step_fn = self._eval[(H, L)]
        variables = state.eval_variables(self.cfg.ema)
        for ev in self.evaluators:
            ev.begin_eval()
        sums: dict[str, Any] = {}
        batch_size = self.cfg.global_batch_size // self.cfg.grad_accum_steps
        for set_name, local in eval_batches(
            self.test_ds, batch_size, process_index=jax.process_index(), process_count=jax.process_count()
        ):
            metrics, outputs = step_fn(variables, state.puzzle_emb, global_batch(local, self.sh))
            prev = sums.get(set_name)
            sums[set_name] = metrics if prev is None else jax.tree.map(lambda a, b: a + b, prev, metrics)
            if self.evaluators:
                host_out = {k: local_rows(v) for k, v in outputs.items()}
                for ev in self.evaluators:
                    ev.update_batch(local, host_out)
        results: dict[str, Any] = {}
        for set_name, s in jax.device_get(sums).items():
            results.update(reduce_eval(s, set_name))
        for ev in self.evaluators:
            extra = ev.result(save_dir)
            results.update({f"eval/{k}": v for k, v in (extra or {}).items()})
        return results


def setup_logging() -> None:
    level = logging.INFO if jax.process_index() == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s", force=True)
    # Orbax logs every save step at INFO through absl; keep its warnings only.
    logging.getLogger("absl").setLevel(logging.WARNING)


@hydra.main(config_path="configs", config_name="quickstart", version_base=None)
def main(raw: DictConfig) -> None:
    # Config and processes
    t_start = time.time()
    raw = apply_smoke(raw)
    cfg = validate(raw)
    distributed.initialize(cfg.distributed)
    setup_logging()
    is_main = jax.process_index() == 0
    paths = resolve_paths(cfg)

    # Data
    train_ds, test_ds = open_datasets(cfg)
    meta = train_ds.metadata
    distributed.assert_consistent(
        "config and dataset metadata", {"config": cfg.model_dump(), "train_metadata": meta.model_dump()}
    )
    total_steps = cfg.total_steps(meta.total_groups, meta.mean_puzzle_examples)
    if total_steps < 1:
        raise ConfigError(
            f"epochs={cfg.epochs} x {meta.total_groups} groups / global_batch_size={cfg.global_batch_size} "
            "gives no training step"
        )
    end_step = min(total_steps, cfg.max_steps or total_steps)

    # Mesh: one `data` axis over every device of every process
    sh = make_shardings(cfg.mesh_model)
    cfg.check_devices(sh.data_size)
    if cfg.global_batch_size % jax.process_count():
        raise ConfigError(
            f"global_batch_size={cfg.global_batch_size} is not divisible by the {jax.process_count()} processes"
        )

    # Model, optimizer, state, carry
    dims = ModelDims(meta.vocab_size, meta.seq_len, meta.num_puzzle_identifiers)
    model = build_model(cfg.arch, dims)
    tx = build_optimizer(cfg, total_steps)
    state = jax.jit(
        lambda: create_train_state(cfg, model, tx, meta.num_puzzle_identifiers), out_shardings=sh.replicated
    )()
    carry = jax.jit(lambda: initial_carry(model, cfg.global_batch_size), out_shardings=sh.rows)()
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    carry_sharding = jax.tree.map(lambda x: x.sharding, carry)
    sampler = TrainSampler(
        train_ds,
        cfg.global_batch_size,
        seed=cfg.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )

    # Resume exactly from the newest checkpoint, else optionally start from given weights
    ckpt = Checkpointer(paths.checkpoint_dir, cfg)
    restored = ckpt.restore_latest(state, carry)
    if restored is not None:
        state, carry, ckpt_meta = restored
        sampler.set_state(ckpt_meta["sampler"])
        log.info("resumed from %s step %d", paths.checkpoint_dir, ckpt_meta["step"])
    elif cfg.load_checkpoint:
        state = load_weights(cfg.load_checkpoint, state, cfg)
    start_step = int(state.step)

    evaluators = (
        [
            create_evaluator(
                e.name, (cfg.data_paths_test or cfg.data_paths)[0], test_ds.metadata, **e.model_dump(exclude={"name"})
            )
            for e in cfg.evaluators
        ]
        if test_ds
        else []
    )
    trainer = Trainer(cfg, model, tx, total_steps, sh, state_sharding, carry_sharding, test_ds, evaluators)
    logger = RunLogger(paths, cfg, raw, is_main=is_main, total_steps=end_step, start_step=start_step)
    n_params = num_parameters(
        cfg.arch, vocab_size=dims.vocab_size, seq_len=dims.seq_len, num_puzzle_identifiers=dims.num_puzzle_identifiers
    )
    logger.message(
        f"TRM {n_params['model']:,} params (+{n_params['puzzle_emb']:,} puzzle emb) | {jax.device_count()} devices, "
        f"{jax.process_count()} processes | steps {start_step}->{end_step} of {total_steps} | "
        f"run_dir {paths.run_dir} | "
        f"checkpoints {paths.checkpoint_dir}"
    )

    steps_per_eval = max(1, total_steps * cfg.eval_interval // cfg.epochs)
    preemption = Preemption()
    step, pending, last_eval = start_step, None, {}
    t_log, step_log = time.time(), start_step

    def save(at_step: int) -> None:
        ckpt.save(at_step, state, carry, {"sampler": sampler.get_state(), "epochs_done": sampler.epochs_done})

    window: dict[str, Any] = {}

    def drain(item) -> None:
        """Host side of a finished step, one step late so the device never waits for the host.
        Metric sums accumulate over the logging window and are divided when logged."""
        nonlocal t_log, step_log, window
        done_step, metrics, extra = item
        metrics = jax.device_get(metrics)
        if not metrics["loss_finite"] and cfg.nonfinite_loss == "stop":
            # Let an asynchronous save still in flight commit: exiting under it leaves a torn
            # temporary directory and a traceback from Orbax's writer threads.
            ckpt.wait()
            raise NonFiniteLossError(
                f"non-finite loss at step {done_step}: the update was not applied and the last good checkpoint "
                f"in {paths.checkpoint_dir} is intact. Lower lr, use a wider dtype, or set nonfinite_loss=skip."
            )
        window = accumulate_train(window, metrics)
        if done_step % cfg.log_every_steps == 0 or done_step == end_step:
            now = time.time()
            row = dict(reduce_train(window, cfg.global_batch_size), **extra)
            row["train/examples_per_sec"] = (done_step - step_log) * cfg.global_batch_size / max(now - t_log, 1e-9)
            t_log, step_log, window = now, done_step, {}
            logger.log(done_step, row)
            logger.progress(
                done_step,
                {
                    "loss": f"{row['train/lm_loss']:.4f}",
                    "acc": f"{row['train/accuracy']:.3f}",
                    "ex/s": f"{row['train/examples_per_sec']:.0f}",
                },
            )

    H, L = recursion_depth(cfg, sampler.epochs_done)
    while step < end_step:
        H, L = recursion_depth(cfg, sampler.epochs_done)
        explore = halt_exploration_prob(cfg, step, total_steps)
        batch = global_batch(sampler.next_batch(), sh)
        state, carry, metrics = trainer.train_fn(H, L)(state, carry, batch, np.float32(explore))
        step += 1
        if pending is not None:
            drain(pending)
        pending = (
            step,
            metrics,
            {
                "epoch": sampler.epochs_done,
                "train/H_cycles": H,
                "train/L_cycles": L,
                "train/halt_exploration_prob": explore,
            },
        )
        # The final evaluation comes after the loop; skip a periodic one that would nearly repeat it.
        eval_due = (
            step % steps_per_eval == 0
            and step // steps_per_eval >= cfg.min_eval_interval
            and end_step - step >= steps_per_eval
        )
        if eval_due and test_ds is not None:
            drain(pending)
            pending = None
            # Let an in-flight async save finish first, so that no process runs evaluation
            # collectives while another is still committing a checkpoint.
            ckpt.wait()
            last_eval = trainer.evaluate(state, H, L, os.path.join(paths.run_dir, f"eval_step_{step}"))
            logger.log(step, {"epoch": sampler.epochs_done, **last_eval})
        if (eval_due and cfg.checkpoint_every_eval) or (
            cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0
        ):
            save(step)
        if preemption.should_stop(step):
            if pending is not None:
                drain(pending)
            if step not in ckpt.steps():  # the periodic save may just have written it
                save(step)
            ckpt.close()
            logger.message(f"preempted: saved step {step} to {paths.checkpoint_dir}; rerun the same command to resume")
            logger.close()
            sys.exit(143)
    if pending is not None:
        drain(pending)

    # Final evaluation and checkpoint; summary.json last, once the checkpoint is durable
    if test_ds is not None:
        ckpt.wait()
        last_eval = trainer.evaluate(state, H, L, os.path.join(paths.run_dir, f"eval_step_{step}"))
        logger.log(step, {"epoch": sampler.epochs_done, **last_eval})
        logger.message(
            "final evaluation: " + ", ".join(f"{k}={v:.4f}" for k, v in last_eval.items() if isinstance(v, float))
        )
    if step not in ckpt.steps():
        save(step)
    ckpt.close()
    sampler.close()
    logger.write_summary(
        {
            "status": "completed",
            "step": step,
            "total_steps": total_steps,
            "num_params": n_params["model"],
            "num_puzzle_emb_params": n_params["puzzle_emb"],
            "final_metrics": last_eval,
            "wall_time_s": time.time() - t_start,
            "peak_memory_bytes": peak_memory_bytes(),
            "checkpoint_dir": paths.checkpoint_dir,
        }
    )
    logger.close()


if __name__ == "__main__":
    main()
