"""Time the real training and evaluation programs on synthetic data, or compile them only.

    python scripts/benchmark.py --suite [--json OUT.json]        # the accelerator run: ceiling + 3 presets
    python scripts/benchmark.py --suite --tiny                    # the same, shrunk for a CPU (CI)
    python scripts/benchmark.py --preset sudoku-att [arc-att ...] [--global-batch-size N] [--steps 20]
    python scripts/benchmark.py --memory-analysis [--configs paper_maze_att ...]   # compile only, any backend

Every program comes from `pretrain_jax.setup_model` on a paper recipe
(configs/experiments/paper_*.yaml composed as `pretrain_jax.py --config-name` composes it), with
the dataset's dimensions given directly (no data on disk). The train step is one ACT step plus the
optimizer update (`steps.train(H, L)`); the eval step runs every row through all halt_max_steps
ACT steps (`steps.eval(H, L)`), as evaluation does in a run.

`--suite` measures, in one process: the device's bf16 matmul ceiling (an 8192^3 product, best of
several timed runs), then the Sudoku MLP-T and attention presets at batch 768 and the maze
attention preset at batch 192 (one device's share of the official 4-GPU batch 768). For each
preset: compile time, median ms/step, % of the measured ceiling (analytic FLOPs from
models/flops.py / time / ceiling), MFU against `--peak-tflops`, peak device memory, XLA's memory
analysis of the train program, and eval throughput in puzzles/s. `--json` is rewritten after
every stage, so a run cut short by a timeout keeps what it measured.

`--memory-analysis` compiles the train and eval programs of the paper configs at their own batch
and reports compile times and XLA's `compiled.memory_analysis()` (temp, argument, output and
aliased bytes): a device-independent proxy for memory when no accelerator is at hand.

`--tiny` shrinks everything (model, batch, sequences, ACT steps, matmul, step counts) so that a
CPU runs it in seconds per preset (tests/test_benchmark.py). The FLOP formula is in
models/flops.py and docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from models.flops import analytic_flops, eval_flops
from models.trm import ModelDims, num_parameters, puzzle_prefix_len
from pretrain_jax import peak_memory_bytes, setup_model
from training.config import PretrainConfig, compose, validate
from training.sharding import Shardings, global_batch, make_shardings

# Dimensions of each dataset family (vocab incl. padding, tokens, puzzle identifiers). ARC's real
# identifier count (one per puzzle and augmentation) only sizes the puzzle-embedding table.
DATASET_DIMS = {
    "sudoku": ModelDims(11, 81, 1),
    "maze": ModelDims(6, 900, 1),
    "arc": ModelDims(12, 900, 1000),
}
PAPER_CONFIGS = ("paper_sudoku_mlp_t", "paper_sudoku_att", "paper_maze_att", "paper_arc1", "paper_arc2")


class Preset(NamedTuple):
    config: str  # a paper recipe: configs/experiments/<config>.yaml
    batch: int  # rows per step on one device: the official run's batch per GPU


PRESETS = {
    "sudoku-mlp-t": Preset("paper_sudoku_mlp_t", 768),
    "sudoku-att": Preset("paper_sudoku_att", 768),
    "maze-att": Preset("paper_maze_att", 192),
    "arc-att": Preset("paper_arc1", 192),
}
SUITE = ("sudoku-mlp-t", "sudoku-att", "maze-att")

# Small enough that compile + a few steps take seconds on a 2-core CPU. H_cycles != L_cycles + 1
# so that a test of the FLOP count can tell them apart; 2 ACT steps keep evaluation short.
TINY = [
    "arch.hidden_size=32",
    "arch.num_heads=2",
    "arch.puzzle_emb_ndim=32",
    "arch.puzzle_emb_len=2",
    "arch.H_cycles=2",
    "arch.L_cycles=2",
    "arch.halt_max_steps=2",
]
TINY_BATCH, TINY_SEQ_LEN, TINY_PUZZLE_IDS = 4, 81, 4
# --tiny checks the harness, not the code XLA makes: unoptimised CPU code without the fusion
# emitters compiles about 4x faster, which keeps the tiny suite well under a minute on 2 cores.
TINY_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


class Sizes(NamedTuple):
    """How much to measure: timed steps after warm-up ones, and the ceiling's matmul."""

    steps: int
    warmup: int
    eval_steps: int
    matmul_n: int
    matmul_repeats: int


FULL_SIZES = Sizes(steps=20, warmup=3, eval_steps=5, matmul_n=8192, matmul_repeats=5)
TINY_SIZES = Sizes(steps=3, warmup=1, eval_steps=2, matmul_n=256, matmul_repeats=3)
MATMUL_CALLS = 10  # products dispatched back to back per timed run, so dispatch gaps do not count


def dims_for(config: str, *, tiny: bool) -> ModelDims:
    family = next(f for f in DATASET_DIMS if f in config)
    d = DATASET_DIMS[family]
    if not tiny:
        return d
    return ModelDims(d.vocab_size, min(d.seq_len, TINY_SEQ_LEN), min(d.num_puzzle_identifiers, TINY_PUZZLE_IDS))


def build_config(
    config: str, *, batch_size: int | None = None, tiny: bool = False, overrides: tuple[str, ...] | list[str] = ()
) -> PretrainConfig:
    """The recipe as pretrain_jax.py composes it, then --tiny, the batch size, the user's overrides."""
    batch = [f"global_batch_size={batch_size}"] if batch_size else []
    return validate(compose(config, [*(TINY if tiny else []), *batch, *overrides]))


def preset_config(name: str, *, batch_size: int | None, tiny: bool, overrides) -> PretrainConfig:
    batch = batch_size or (TINY_BATCH if tiny else PRESETS[name].batch)
    return build_config(PRESETS[name].config, batch_size=batch, tiny=tiny, overrides=overrides)


def synthetic_batch(dims: ModelDims, rows: int, sh: Shardings, seed: int) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    local = rows // jax.process_count()
    # Token 0 is padding in the official datasets; use real tokens only.
    host = {
        "inputs": rng.integers(1, dims.vocab_size, (local, dims.seq_len), dtype=np.int32),
        "labels": rng.integers(1, dims.vocab_size, (local, dims.seq_len), dtype=np.int32),
        "puzzle_identifiers": rng.integers(0, dims.num_puzzle_identifiers, (local,), dtype=np.int32),
    }
    return global_batch(host, sh)


def xla_flops(compiled) -> float | None:
    """XLA's cost-analysis FLOPs; older JAX returns a list with one dict per program."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def memory_analysis(compiled) -> dict[str, int] | None:
    """XLA's static buffer assignment of one program. `program_bytes` = arguments + outputs -
    donated (aliased) outputs + temporaries: what the program needs at once."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(m, (list, tuple)):
        m = m[0] if m else None
    if m is None:
        return None
    out = {
        "temp_bytes": int(m.temp_size_in_bytes),
        "argument_bytes": int(m.argument_size_in_bytes),
        "output_bytes": int(m.output_size_in_bytes),
        "alias_bytes": int(m.alias_size_in_bytes),
    }
    out["program_bytes"] = out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
    return out


def compile_timed(fn, *args):
    """Trace, lower and compile `fn` for `args` (consumes no buffers); returns (compiled, seconds)."""
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def time_calls(call: Callable[[], Any], *, warmup: int, steps: int) -> np.ndarray:
    """Milliseconds of each of `steps` calls after `warmup` ones. Calls are asynchronous: each is
    timed until everything it returned is ready."""
    ms = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        if i >= warmup:
            ms.append(1e3 * (time.perf_counter() - t0))
    return np.asarray(ms)


def matmul_ceiling(*, n: int, repeats: int) -> dict[str, Any]:
    """The device's achievable bf16 matmul rate: the best of `repeats` timed runs of
    MATMUL_CALLS back-to-back n^3 products on random data (zeros would run faster)."""
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.bfloat16)
    b = jax.random.normal(kb, (n, n), jnp.bfloat16)
    product, compile_s = compile_timed(jax.jit(jnp.matmul), a, b)

    def run():
        out = None
        for _ in range(MATMUL_CALLS):
            out = product(a, b)
        return out

    ms = time_calls(run, warmup=1, steps=repeats) / MATMUL_CALLS
    best = float(ms.min())
    return {
        "n": n,
        "dtype": "bfloat16",
        "compile_s": compile_s,
        "best_ms": best,
        "median_ms": float(np.median(ms)),
        "tflops": 2 * n**3 / (best / 1e3) / 1e12,
        "repeats": repeats,
        "calls_per_repeat": MATMUL_CALLS,
    }


def describe(cfg: PretrainConfig, dims: ModelDims) -> dict[str, Any]:
    a = cfg.arch
    params = num_parameters(
        a, vocab_size=dims.vocab_size, seq_len=dims.seq_len, num_puzzle_identifiers=dims.num_puzzle_identifiers
    )
    return {
        "global_batch_size": cfg.global_batch_size,
        "hidden_size": a.hidden_size,
        "num_heads": a.num_heads,
        "expansion": a.expansion,
        "L_layers": a.L_layers,
        "H_cycles": a.H_cycles,
        "L_cycles": a.L_cycles,
        "halt_max_steps": a.halt_max_steps,
        "mlp_t": a.mlp_t,
        "pos_encodings": a.pos_encodings,
        "no_ACT_continue": a.no_ACT_continue,
        "ema": cfg.ema,
        "seq_len": dims.seq_len,
        "total_len": dims.seq_len + puzzle_prefix_len(a),
        "vocab_size": dims.vocab_size,
        "num_puzzle_identifiers": dims.num_puzzle_identifiers,
        "forward_dtype": a.forward_dtype,
        "num_params": params["model"],
        "num_puzzle_emb_params": params["puzzle_emb"],
    }


class Programs(NamedTuple):
    """A run's train and eval programs, compiled, with the inputs they were compiled for."""

    cfg: PretrainConfig
    state: Any
    carry: Any
    batch: dict[str, jax.Array]
    eval_batch: dict[str, jax.Array]
    explore: jax.Array
    train: Any
    eval: Any
    compile_s: float
    eval_compile_s: float


def compile_programs(cfg: PretrainConfig, dims: ModelDims) -> Programs:
    """Set up exactly as pretrain_jax.py does and compile the train and eval steps."""
    sh = make_shardings(cfg.mesh_model)
    cfg.check_devices(sh.data_size)
    m = setup_model(cfg, dims, total_steps=1000, sh=sh)
    H, L = cfg.arch.H_cycles, cfg.arch.L_cycles
    batch = synthetic_batch(dims, cfg.global_batch_size, sh, cfg.seed)
    # Evaluation runs batches of global_batch_size // grad_accum_steps rows, as in a run.
    eval_rows = cfg.global_batch_size // cfg.grad_accum_steps
    eval_batch = batch if eval_rows == cfg.global_batch_size else synthetic_batch(dims, eval_rows, sh, cfg.seed)
    explore = jax.device_put(np.float32(cfg.arch.halt_exploration_prob), sh.replicated)
    train, compile_s = compile_timed(m.steps.train(H, L), m.state, m.carry, batch, explore)
    evaluate, eval_compile_s = compile_timed(
        m.steps.eval(H, L), m.state.eval_variables(cfg.ema), m.state.puzzle_emb, eval_batch
    )
    return Programs(cfg, m.state, m.carry, batch, eval_batch, explore, train, evaluate, compile_s, eval_compile_s)


def analyse(p: Programs) -> dict[str, Any]:
    return {
        "compile_s": p.compile_s,
        "eval_compile_s": p.eval_compile_s,
        "train_memory": memory_analysis(p.train),
        "eval_memory": memory_analysis(p.eval),
        "xla_flops_per_step": xla_flops(p.train),
    }


def time_programs(p: Programs, sizes: Sizes) -> dict[str, Any]:
    """Median times of the train step (threading its donated state) and then of the eval step
    on the trained state's weights."""
    state, carry = p.state, p.carry

    def train_step():
        nonlocal state, carry
        state, carry, metrics = p.train(state, carry, p.batch, p.explore)
        return state, carry, metrics

    train_ms = time_calls(train_step, warmup=sizes.warmup, steps=sizes.steps)
    variables = state.eval_variables(p.cfg.ema)
    eval_ms = time_calls(lambda: p.eval(variables, state.puzzle_emb, p.eval_batch), warmup=1, steps=sizes.eval_steps)
    return {
        "ms_per_step": float(np.median(train_ms)),
        "ms_p10": float(np.percentile(train_ms, 10)),
        "ms_p90": float(np.percentile(train_ms, 90)),
        "eval_ms": float(np.median(eval_ms)),
        "eval_rows": int(p.eval_batch["inputs"].shape[0]),
    }


def measure_preset(
    name: str, cfg: PretrainConfig, dims: ModelDims, *, sizes: Sizes, ceiling_tflops: float | None, peak_tflops: float
) -> dict[str, Any]:
    peak_before = peak_memory_bytes()
    p = compile_programs(cfg, dims)
    r = {"preset": name, "config": PRESETS[name].config, **describe(cfg, dims), **analyse(p), **time_programs(p, sizes)}
    a, B = cfg.arch, cfg.global_batch_size
    flops = analytic_flops(a, dims, B, a.H_cycles, a.L_cycles)
    step_s, eval_s = r["ms_per_step"] / 1e3, r["eval_ms"] / 1e3
    peak = peak_memory_bytes()
    r.update(
        steps=sizes.steps,
        warmup=sizes.warmup,
        eval_steps=sizes.eval_steps,
        examples_per_s=B / step_s,
        flops_per_step=flops["total"],
        flops_forward=flops["forward"],
        flops_backward=flops["backward"],
        pct_of_ceiling=None if ceiling_tflops is None else 100 * flops["total"] / step_s / (ceiling_tflops * 1e12),
        peak_tflops=peak_tflops,
        floor_ms=flops["total"] / (peak_tflops * 1e12) * 1e3,
        mfu=flops["total"] / step_s / (peak_tflops * 1e12),
        eval_flops=eval_flops(a, dims, r["eval_rows"], a.H_cycles, a.L_cycles),
        eval_puzzles_per_s=r["eval_rows"] / eval_s,
        # The device counter is the process's high-water mark: it is this preset's own peak only
        # where this preset raised it.
        peak_memory_bytes=peak,
        peak_memory_new_high=None if peak is None else peak > (peak_before or 0),
        memory_note=None if peak is not None else "device.memory_stats() has no peak_bytes_in_use on this backend",
    )
    r["eval_pct_of_ceiling"] = (
        None if ceiling_tflops is None else 100 * r["eval_flops"] / eval_s / (ceiling_tflops * 1e12)
    )
    return r


def compile_only(config: str, *, batch_size: int | None, tiny: bool, overrides) -> dict[str, Any]:
    """Compile times and memory analysis of one paper config's programs, nothing run."""
    cfg = build_config(config, batch_size=batch_size, tiny=tiny, overrides=overrides)
    dims = dims_for(config, tiny=tiny)
    return {"config": config, **describe(cfg, dims), **analyse(compile_programs(cfg, dims))}


def use_fast_compile() -> None:
    """Effective only before JAX first creates its backends, which is when XLA reads its flags."""
    os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), TINY_XLA_FLAGS]))


def environment(args) -> dict[str, Any]:
    device = jax.devices()[0]
    return {
        "device": f"{device.platform}: {device.device_kind}",
        "num_devices": jax.device_count(),
        "jax_version": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "tiny": args.tiny,
        "overrides": args.override,
    }


class Report:
    """The results so far, printed as they come and rewritten to --json after every stage."""

    def __init__(self, args):
        self.path, self.t0 = args.json, time.perf_counter()
        self.data: dict[str, Any] = environment(args)

    def add(self, key: str, value, text: str) -> None:
        if isinstance(self.data.get(key), list):
            self.data[key].append(value)
        else:
            self.data[key] = value
        self.data["wall_s"] = time.perf_counter() - self.t0
        print(f"{text}\n[{self.data['wall_s']:.0f} s]", flush=True)
        if self.path:
            with open(self.path, "w") as f:
                json.dump(self.data, f, indent=2)


def gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def memory_text(m: dict[str, int] | None) -> str:
    if m is None:
        return "n/a"
    return (
        f"{gib(m['program_bytes'])} (temp {gib(m['temp_bytes'])}, arguments {gib(m['argument_bytes'])}, "
        f"outputs {gib(m['output_bytes'])}, aliased {gib(m['alias_bytes'])})"
    )


def program_text(r: dict[str, Any]) -> str:
    return (
        f"{r.get('preset') or r['config']}: batch {r['global_batch_size']}, "
        f"hidden {r['hidden_size']}, H{r['H_cycles']}xL{r['L_cycles']}x{r['L_layers']} layers, "
        f"{'MLP-T' if r['mlp_t'] else 'attention'}, {r['total_len']} positions, {r['forward_dtype']}"
    )


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}%"


def preset_text(r: dict[str, Any]) -> str:
    peak = gib(r["peak_memory_bytes"]) + ("" if r["peak_memory_new_high"] in (None, True) else " (earlier preset)")
    acts = f"{r['eval_ms']:.1f} ms per {r['eval_rows']} puzzles x {r['halt_max_steps']} ACT steps"
    rows = [
        ("compile", f"{r['compile_s']:.2f} s train, {r['eval_compile_s']:.2f} s eval"),
        ("ms/step", f"{r['ms_per_step']:.2f} (p10 {r['ms_p10']:.2f}, p90 {r['ms_p90']:.2f}) over {r['steps']} steps"),
        ("examples/s", f"{r['examples_per_s']:,.1f}"),
        (
            "FLOPs/step",
            f"{r['flops_per_step']:.4g} analytic (fwd {r['flops_forward']:.4g}, bwd {r['flops_backward']:.4g})",
        ),
        ("of ceiling", f"{pct(r['pct_of_ceiling'])} (eval {pct(r['eval_pct_of_ceiling'])})"),
        ("MFU", f"{100 * r['mfu']:.3g}% of {r['peak_tflops']:g} TFLOP/s (floor {r['floor_ms']:.3g} ms)"),
        ("peak memory", peak if r["memory_note"] is None else f"n/a ({r['memory_note']})"),
        ("train program", memory_text(r["train_memory"])),
        ("eval", f"{r['eval_puzzles_per_s']:,.1f} puzzles/s ({acts})"),
    ]
    return "\n".join([program_text(r), *(f"{k:>14}  {v}" for k, v in rows)])


def compile_text(r: dict[str, Any]) -> str:
    rows = [
        ("compile", f"{r['compile_s']:.2f} s train, {r['eval_compile_s']:.2f} s eval"),
        ("train program", memory_text(r["train_memory"])),
        ("eval program", memory_text(r["eval_memory"])),
    ]
    return "\n".join([program_text(r), *(f"{k:>14}  {v}" for k, v in rows)])


def ceiling_text(c: dict[str, Any]) -> str:
    return (
        f"bf16 matmul ceiling: {c['tflops']:.1f} TFLOP/s ({c['n']}^3 in {c['best_ms']:.3f} ms best, "
        f"{c['median_ms']:.3f} ms median of {c['repeats']} runs x {c['calls_per_repeat']} products)"
    )


def sizes_from(args) -> Sizes:
    base = TINY_SIZES if args.tiny else FULL_SIZES
    given = {k: getattr(args, k) for k in ("steps", "warmup", "eval_steps") if getattr(args, k) is not None}
    return base._replace(**given)


def run_presets(args, report: Report) -> int:
    """Measure the presets; returns how many failed."""
    sizes = sizes_from(args)
    ceiling = None
    if args.suite:
        c = matmul_ceiling(n=sizes.matmul_n, repeats=sizes.matmul_repeats)
        report.add("ceiling", c, ceiling_text(c))
        ceiling = c["tflops"]
    report.data["presets"] = []
    failed = 0
    for name in SUITE if args.suite else args.preset:
        cfg = preset_config(name, batch_size=args.global_batch_size, tiny=args.tiny, overrides=args.override)
        dims = dims_for(PRESETS[name].config, tiny=args.tiny)
        try:
            r = measure_preset(name, cfg, dims, sizes=sizes, ceiling_tflops=ceiling, peak_tflops=args.peak_tflops)
        except jax.errors.JaxRuntimeError as e:
            # One device call should bring back every preset it can: an out-of-memory or a
            # compile failure is recorded and the next preset still runs.
            failed += 1
            error = str(e).splitlines()[0] if str(e) else type(e).__name__
            report.add("presets", {"preset": name, "error": error}, f"{name}: FAILED: {error}")
            continue
        report.add("presets", r, preset_text(r))
    return failed


def run_memory_analysis(args, report: Report) -> None:
    report.data["programs"] = []
    for config in args.configs:
        r = compile_only(config, batch_size=args.global_batch_size, tiny=args.tiny, overrides=args.override)
        report.add("programs", r, compile_text(r))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--suite", action="store_true", help=f"matmul ceiling, then {', '.join(SUITE)}")
    mode.add_argument("--preset", nargs="+", choices=sorted(PRESETS), help="time these presets (no ceiling)")
    mode.add_argument("--memory-analysis", action="store_true", help="compile the --configs only, run nothing")
    p.add_argument("--configs", nargs="+", choices=PAPER_CONFIGS, default=list(PAPER_CONFIGS))
    p.add_argument("--global-batch-size", type=int, help="instead of each preset's or config's own")
    p.add_argument(
        "--steps", type=int, help=f"timed train steps (default {FULL_SIZES.steps}, --tiny {TINY_SIZES.steps})"
    )
    p.add_argument("--warmup", type=int, help=f"untimed train steps first (default {FULL_SIZES.warmup})")
    p.add_argument("--eval-steps", type=int, help=f"timed eval batches (default {FULL_SIZES.eval_steps})")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="datasheet peak for MFU (H100/H200 SXM bf16: 989)")
    p.add_argument("--json", help="write the results here (rewritten after every stage)")
    p.add_argument("--tiny", action="store_true", help="small everything, for a CPU run in seconds")
    p.add_argument("--override", nargs="*", default=[], help="Hydra overrides applied last, e.g. arch.L_cycles=4")
    args = p.parse_args(argv)
    if any(v is not None and v < 1 for v in (args.steps, args.eval_steps)) or (args.warmup or 0) < 0:
        p.error("--steps and --eval-steps must be >= 1 and --warmup >= 0")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.tiny:
        use_fast_compile()
    report = Report(args)
    print(f"{report.data['device']} x{report.data['num_devices']}, JAX {jax.__version__}", flush=True)
    if args.memory_analysis:
        run_memory_analysis(args, report)
    elif run_presets(args, report):
        sys.exit(1)


if __name__ == "__main__":
    main()
