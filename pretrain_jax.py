"""Train a Tiny Recursive Model.

    python pretrain_jax.py                          # quick start: small TRM, 4x4 Sudoku, CPU
    python pretrain_jax.py --config-name exp01a     # an experiment of the scaling study
    python pretrain_jax.py --config-name cfg_pretrain data_paths=[data/sudoku-extreme-1k-aug-1000] arch.mlp_t=true

`train(cfg)` is the whole run as a function (tests call it in-process); `setup(cfg)` builds what
its loop needs. Reading order: config -> distributed -> data -> mesh -> model and state ->
resume -> loop (train step; metrics pulled one step late; what is due: log, evaluate,
checkpoint, stop) -> final evaluation, checkpoint and summary.

Shape legend for tensors named with a suffix: B batch rows, L sequence length (tokens),
S = P + L positions with the P puzzle-embedding prefix, D hidden size, V vocabulary, E puzzle
embedding width, N puzzle identifiers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import hydra
import jax
import numpy as np
from omegaconf import DictConfig

from dataset.errors import DatasetError
from dataset.puzzle_dataset import PuzzleDataset, TrainSampler
from evaluators import Evaluator, create_evaluator
from models.act import Carry
from models.flops import analytic_flops
from models.trm import ModelDims, TRMInner, build_model, num_parameters
from training import distributed
from training.checkpointing import Checkpointer, CheckpointError, load_weights
from training.config import ConfigError, PretrainConfig, apply_smoke, validate
from training.cost import CostClock
from training.cost import summary as cost_summary
from training.data import open_datasets
from training.evaluation import eval_weightings, evaluate_all, subset_examples
from training.log_setup import setup_logging
from training.metrics_log import RunLogger, accumulate_train, reduce_train
from training.optimizers import build_optimizer
from training.periodic import Periodic, steps_per_eval
from training.run_paths import RunLock, RunPaths, resolve_paths, run_id
from training.schedules import halt_exploration_prob, recursion_depth
from training.sharding import Shardings, global_batch, make_shardings
from training.signals import StopSignals
from training.state import TrainState, init_state_and_carry
from training.step import CompiledSteps

log = logging.getLogger("pretrain")


class NonFiniteError(RuntimeError):
    """A non-finite loss or non-finite weights; the message says what to do."""


# Errors whose message is the whole story: reported as one line, without a traceback. An OSError
# names its file and cause (a full disk, a missing permission), which is what the user must fix.
EXPECTED_ERRORS = (ConfigError, DatasetError, CheckpointError, NonFiniteError, OSError)


@dataclass
class ModelSetup:
    """The model and everything that steps it, for given data dimensions."""

    model: TRMInner
    state: TrainState
    carry: Carry
    steps: CompiledSteps
    total_steps: int


def setup_model(cfg: PretrainConfig, dims: ModelDims, *, total_steps: int, sh: Shardings) -> ModelSetup:
    """Model, optimizer, initial state and carry in their final shardings, and the step cache.
    Also what benchmarks and tests build, so they time and test exactly the training program."""
    model = build_model(cfg.arch, dims)
    tx = build_optimizer(cfg, total_steps)
    state, carry = init_state_and_carry(cfg, model, tx, num_puzzle_ids=dims.num_puzzle_identifiers, sh=sh)
    steps = CompiledSteps(cfg=cfg, model=model, tx=tx, total_steps=total_steps, sh=sh, state=state, carry=carry)
    return ModelSetup(model=model, state=state, carry=carry, steps=steps, total_steps=total_steps)


@dataclass
class RunSetup:
    """Everything the training loop needs."""

    cfg: PretrainConfig
    paths: RunPaths
    sh: Shardings
    m: ModelSetup
    sampler: TrainSampler
    test_ds: PuzzleDataset | None
    evaluators: list[Evaluator]
    ckpt: Checkpointer
    lock: RunLock
    logger: RunLogger
    periodic: Periodic
    start_step: int
    n_params: dict[str, int]
    step: int = 0  # optimizer steps done, as the loop goes (for error reports)
    prior_cost: dict[str, float] = field(default_factory=dict)  # cost totals of the sessions before a resume

    def close(self) -> None:
        """Release background threads, files and the run lock, waiting for saves in flight."""
        try:
            self.sampler.close()
            self.ckpt.close()
            self.logger.close()
        finally:
            self.lock.release()


@dataclass
class RunResult:
    status: Literal["completed", "preempted", "failed"]
    step: int
    metrics: dict[str, Any] = field(default_factory=dict)
    run_dir: str = ""
    checkpoint_dir: str = ""
    error: str | None = None
    exit_code: int = 0


def setup(cfg: PretrainConfig, *, raw: DictConfig | None = None) -> RunSetup:
    """Everything the loop needs; on an error part-way, what was opened is closed again."""
    with contextlib.ExitStack() as on_error:
        run = _setup(cfg, raw, on_error)
        on_error.pop_all()  # success: RunSetup.close() is the caller's
        return run


def _setup(cfg: PretrainConfig, raw: DictConfig | None, on_error: contextlib.ExitStack) -> RunSetup:
    paths = resolve_paths(cfg)
    if cfg.arch.forward_dtype == "float16" and not cfg.arch.mlp_t and jax.default_backend() == "cpu":
        raise ConfigError("float16 attention does not run on CPU (XLA has no such kernel): use bfloat16 or float32")
    # One run per run_dir at a time; checkpoints carry the run's id so no other run resumes them.
    lock = RunLock(paths.run_dir)
    on_error.callback(lock.release)
    rid = run_id(paths.run_dir)

    # Data, and the evaluators that read it (checked before anything big is built)
    train_ds, test_ds = open_datasets(cfg)
    evaluators = []
    if test_ds is not None:
        test_path = (cfg.data_paths_test or cfg.data_paths)[0]
        for e in cfg.evaluators:
            evaluators.append(create_evaluator(e.name, test_path, test_ds.metadata, **e.model_dump(exclude={"name"})))
    meta = train_ds.metadata
    distributed.assert_consistent(
        "config and dataset metadata", {"config": cfg.model_dump(), "train_metadata": meta.model_dump()}
    )
    total_steps = cfg.total_steps(meta.total_groups, meta.mean_puzzle_examples)
    if cfg.lr_warmup_steps >= total_steps:
        log.warning(
            "lr_warmup_steps=%d >= the run's %d steps: the lr never leaves warm-up", cfg.lr_warmup_steps, total_steps
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
    m = setup_model(cfg, dims, total_steps=total_steps, sh=sh)
    sampler = TrainSampler(
        train_ds,
        cfg.global_batch_size,
        seed=cfg.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    on_error.callback(sampler.close)

    # Resume exactly from the newest checkpoint, else optionally start from given weights
    spe = steps_per_eval(total_steps=total_steps, epochs=cfg.epochs, eval_interval=cfg.eval_interval)
    ckpt = Checkpointer(paths.checkpoint_dir, cfg, steps_per_eval=spe, run_id=rid, dataset=meta.model_dump())
    on_error.callback(ckpt.close)
    restored = ckpt.restore_latest(m.state, m.carry, strict=_in_sweep())
    if restored is not None:
        m.state, m.carry, ckpt_meta = restored
        sampler.set_state(ckpt_meta["sampler"])
        log.info("resumed from %s step %d", paths.checkpoint_dir, ckpt_meta["step"])
        if cfg.load_checkpoint:
            log.warning(
                "load_checkpoint=%s is ignored: resuming this run_dir's own checkpoint (use a new run_dir to "
                "start from those weights)",
                cfg.load_checkpoint,
            )
    elif cfg.load_checkpoint:
        m.state = load_weights(cfg.load_checkpoint, m.state, cfg)
    start_step = int(m.state.step)

    logger = RunLogger(paths, cfg, raw, is_main=jax.process_index() == 0, total_steps=end_step, start_step=start_step)
    n_params = num_parameters(
        cfg.arch,
        vocab_size=dims.vocab_size,
        seq_len=dims.seq_len,
        num_puzzle_identifiers=dims.num_puzzle_identifiers,
    )
    periodic = Periodic(
        end_step=end_step,
        steps_per_eval=spe,
        min_eval_interval=cfg.min_eval_interval,
        log_every_steps=cfg.log_every_steps,
    )
    return RunSetup(
        cfg=cfg,
        paths=paths,
        sh=sh,
        m=m,
        sampler=sampler,
        test_ds=test_ds,
        evaluators=evaluators,
        ckpt=ckpt,
        lock=lock,
        logger=logger,
        periodic=periodic,
        start_step=start_step,
        n_params=n_params,
        prior_cost=restored[2].get("cost", {}) if restored is not None else {},
    )


def train(cfg: PretrainConfig, *, raw: DictConfig | None = None) -> RunResult:
    """The whole run. Returns how it ended; errors a user can fix come back as status `failed`
    with a one-line message (after the checkpoints in flight are committed), bugs raise."""
    t_start = time.time()
    distributed.initialize(cfg.distributed)
    setup_logging()
    try:
        s = setup(cfg, raw=raw)
    except EXPECTED_ERRORS as e:
        return RunResult("failed", 0, error=_error_text(e, resolve_paths(cfg).run_dir), exit_code=1)
    signals = StopSignals(
        grace_seconds=cfg.stop_grace_seconds, multi_process=jax.process_count() > 1, last_checkpoint=s.ckpt.last_good
    )
    clock = CostClock(session_start=t_start, num_devices=jax.device_count(), prior=s.prior_cost)
    try:
        return _run_loop(s, signals, clock)
    except EXPECTED_ERRORS as e:
        message = _error_text(e, s.paths.run_dir)
        try:
            s.ckpt.wait()
        except CheckpointError as also:
            message = f"{message}; {also}"
        message = f"{message}; {s.ckpt.last_good()}"
        return RunResult("failed", s.step, run_dir=s.paths.run_dir, error=message, exit_code=1)
    finally:
        clock.close()
        signals.close()
        s.close()


def _error_text(e: Exception, run_dir: str) -> str:
    # An OSError raised by write() or close() does not name its file.
    if isinstance(e, OSError) and not e.filename:
        return f"{e} (writing under run_dir {run_dir})"
    return str(e)


def _run_loop(s: RunSetup, signals: StopSignals, clock: CostClock) -> RunResult:
    cfg, sh, m = s.cfg, s.sh, s.m
    s.logger.message(
        f"TRM {s.n_params['model']:,} params (+{s.n_params['puzzle_emb']:,} puzzle emb) | "
        f"{jax.device_count()} devices, {jax.process_count()} processes | "
        f"steps {s.start_step}->{s.periodic.end_step} of {m.total_steps} | run_dir {s.paths.run_dir} | "
        f"checkpoints {s.paths.checkpoint_dir}"
    )
    state, carry = m.state, m.carry
    window = TrainWindow(cfg, s.logger)
    step = s.step = s.start_step
    pending, last_eval = None, {}
    H_cycles, L_cycles = recursion_depth(cfg, s.sampler.epochs_done)
    meta = s.sampler.dataset.metadata
    dims = ModelDims(meta.vocab_size, meta.seq_len, meta.num_puzzle_identifiers)
    subset = subset_examples(s.test_ds, cfg.eval_subset, seed=cfg.seed) if s.test_ds is not None else None

    def save(at_step: int) -> None:
        # The save copies the state off the devices anyway; waiting first keeps the step's own
        # compute out of the checkpoint time.
        jax.block_until_ready(state)
        with clock.section("checkpoint"):
            s.ckpt.save(
                at_step,
                state,
                carry,
                {"sampler": s.sampler.get_state(), "epochs_done": s.sampler.epochs_done, "cost": clock.totals()},
            )

    def run_eval(at_step: int, *, full: bool) -> dict[str, Any]:
        # No process runs evaluation collectives while another still commits a checkpoint.
        with clock.section("checkpoint"):
            s.ckpt.wait()
        with clock.section("eval"):
            results = evaluate_all(
                m.steps.eval(H_cycles, L_cycles),
                weightings=eval_weightings(state, use_ema=cfg.ema, ema_rates=cfg.ema_rates),
                examples=None if full else subset,
                puzzle_emb=state.puzzle_emb,
                test_ds=s.test_ds,
                batch_size=cfg.global_batch_size // cfg.grad_accum_steps,
                sh=sh,
                evaluators=s.evaluators,
                save_dir=os.path.join(s.paths.run_dir, f"eval_step_{at_step}"),
                save_outputs=cfg.eval_save_outputs,
            )
        s.logger.log(at_step, {"epoch": s.sampler.epochs_done, **results})
        return results

    while step < s.periodic.end_step:
        H_cycles, L_cycles = recursion_depth(cfg, s.sampler.epochs_done)
        explore = halt_exploration_prob(cfg, step, m.total_steps)
        with jax.transfer_guard(cfg.transfer_guard):
            batch = global_batch(s.sampler.next_batch(), sh)
            explore_prob = jax.device_put(np.float32(explore), sh.replicated)
            state, carry, metrics = m.steps.train(H_cycles, L_cycles)(state, carry, batch, explore_prob)
        s.ckpt.raise_failed_write()
        clock.add_steps(1, analytic_flops(cfg.arch, dims, cfg.global_batch_size, H_cycles, L_cycles)["total"])
        step = s.step = step + 1
        due = s.periodic.due(step)
        # The host reads a step's metrics one step late, so the device never waits for it.
        if pending is not None:
            window.add(*pending)
        extra = {"epoch": s.sampler.epochs_done, "train/H_cycles": H_cycles, "train/L_cycles": L_cycles}
        pending = (step, metrics, dict(extra, **{"train/halt_exploration_prob": explore}), due.log)
        if due.evaluate and s.test_ds is not None:
            window.add(*pending)
            pending = None
            last_eval = run_eval(step, full=False)
        if s.ckpt.is_due(step, final=False) and not due.final:
            save(step)
        if signals.should_stop(step):
            if pending is not None:
                window.add(*pending)
            save(step)
            s.ckpt.wait()
            name = "SIGTERM (preemption)" if signals.signum == 15 else "SIGINT"
            s.logger.message(f"{name}: saved step {step} to {s.paths.checkpoint_dir}; rerun the same command to resume")
            return RunResult(
                "preempted", step, last_eval, s.paths.run_dir, s.paths.checkpoint_dir, exit_code=128 + signals.signum
            )
    if pending is not None:
        window.add(*pending)

    # Final evaluation and checkpoint; summary.json last, once the checkpoint is durable
    if s.test_ds is not None:
        last_eval = run_eval(step, full=True)
        s.logger.message(
            "final evaluation: "
            + ", ".join(f"{k}={v:.4f}" for k, v in last_eval.items() if k.startswith("eval/") and isinstance(v, float))
        )
    save(step)
    with clock.section("checkpoint"):
        s.ckpt.wait()
    s.logger.write_summary(
        {
            "status": "completed",
            "step": step,
            "total_steps": m.total_steps,
            "num_params": s.n_params["model"],
            "num_puzzle_emb_params": s.n_params["puzzle_emb"],
            "final_metrics": last_eval,
            "wall_time_s": time.time() - clock.session_start,
            "peak_memory_bytes": peak_memory_bytes(),
            "checkpoint_dir": s.paths.checkpoint_dir,
            "config_hash": cfg.hash(),
            "smoke": cfg.smoke.enabled,
            "cost": cost_summary(clock.totals(), global_batch_size=cfg.global_batch_size, peak_tflops=cfg.peak_tflops),
        }
    )
    return RunResult("completed", step, last_eval, s.paths.run_dir, s.paths.checkpoint_dir)


class TrainWindow:
    """Host side of finished train steps: checks them, sums metrics over the logging window and
    logs the window's averages."""

    def __init__(self, cfg: PretrainConfig, logger: RunLogger):
        self.cfg, self.logger = cfg, logger
        self.sums: dict[str, Any] = {}
        self.t0, self.step0 = time.time(), None

    def add(self, step: int, metrics, extra: dict[str, Any], log_now: bool) -> None:
        metrics = jax.device_get(metrics)
        if not metrics["params_finite"]:
            raise NonFiniteError(
                f"the weights became non-finite before step {step} (nonfinite_loss={self.cfg.nonfinite_loss} "
                "cannot recover from that): resume from a checkpoint with a lower lr or a wider dtype"
            )
        if not metrics["loss_finite"] and self.cfg.nonfinite_loss == "stop":
            raise NonFiniteError(
                f"non-finite loss at step {step}, the update was not applied: lower lr, use a wider "
                "forward_dtype, or set nonfinite_loss=skip to drop such updates"
            )
        if metrics["weights_overflow"] and self.cfg.nonfinite_loss == "stop":
            raise NonFiniteError(
                f"the update of step {step} would make the weights non-finite (lr={self.cfg.lr:g}), so it was "
                "not applied: lower lr, or set nonfinite_loss=skip to drop such updates"
            )
        self.step0 = step - 1 if self.step0 is None else self.step0
        self.sums = accumulate_train(self.sums, metrics)
        if not log_now:
            return
        now = time.time()
        row = dict(reduce_train(self.sums, self.cfg.global_batch_size), **extra)
        row["train/examples_per_sec"] = (step - self.step0) * self.cfg.global_batch_size / max(now - self.t0, 1e-9)
        self.t0, self.step0, self.sums = now, step, {}
        self.logger.log(step, row)
        self.logger.progress(
            step,
            {
                "loss": f"{row['train/lm_loss']:.4f}",
                "acc": f"{row['train/accuracy']:.3f}",
                "ex/s": f"{row['train/examples_per_sec']:.0f}",
            },
        )


def peak_memory_bytes() -> int | None:
    stats = jax.local_devices()[0].memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _in_sweep() -> bool:
    """A Hydra multirun job: resuming may not pick up another job's state."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(config_path="configs", config_name="quickstart", version_base=None)
def main(raw: DictConfig) -> int:
    try:
        raw = apply_smoke(raw)
        cfg = validate(raw)
        result = train(cfg, raw=raw)
        code, error = result.exit_code, result.error
    except EXPECTED_ERRORS as e:
        code, error = 1, str(e)
    if error:
        print(f"error: {error}", file=sys.stderr)
    # In a sweep the next job runs after a failed one (training/sweep.py reports it at the end);
    # a signal (preemption, Ctrl-C) ends the whole sweep.
    if _in_sweep() and code < 128:
        return code
    sys.exit(code)


if __name__ == "__main__":
    main()
