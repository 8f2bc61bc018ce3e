"""Time the real training step (one ACT step + optimizer update) on synthetic data.

    python scripts/benchmark.py --preset sudoku-mlp-t|sudoku-att|arc-att [--global-batch-size 768]
        [--steps 20] [--warmup 3] [--peak-tflops 989] [--json OUT.json] [--tiny] [--override key=value ...]

Builds the preset's config from the Hydra configs exactly as `pretrain_jax.py` does, with the
dataset dimensions given directly (no data on disk), and reports compile time, ms/step
(median, p10, p90), examples/s, analytic FLOPs/step, XLA's own FLOP count, MFU against
`--peak-tflops`, the matmul floor, and peak device memory. `--tiny` shrinks the model and batch
so that a CPU run takes seconds (used by tests/test_benchmark.py).

Analytic FLOPs of one training step (matmuls only; see docs/performance.md). With B rows,
S = seq_len + puzzle_emb_len positions, D = hidden_size, V = vocab, I = swiglu_width(D),
I_t = swiglu_width(S):
    block  = 2*B*S*(2*D*I + I*D)                              channel SwiGLU
           + 2*B*D*(2*S*I_t + I_t*S)                          MLP-T token SwiGLU, or
           + 2*B*S*(3*D*D + D*D) + 4*B*S*S*D                  attention projections, scores and values
    heads  = 2*B*S*D*V + 2*B*D*2                              lm_head (all S positions) + q_head
    forward  = H_cycles*(L_cycles+1)*L_layers * block + heads
    backward = 2 * ((L_cycles+1)*L_layers * block + heads)    gradient through the last H cycle only
    (+ forward again for the Q-learning target when no_ACT_continue=false)
The embedding lookups, norms, RoPE, softmax and optimizer are not matmuls and are not counted.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import NamedTuple

import jax
import numpy as np

from models.flops import analytic_flops
from models.trm import ModelDims, num_parameters, puzzle_prefix_len
from pretrain_jax import peak_memory_bytes, setup_model
from training.config import compose, validate
from training.sharding import global_batch, make_shardings

# The paper's architecture, written out so that a change of the base config's defaults does not
# silently change what a benchmark measures.
_PAPER_ARCH = [
    "arch.hidden_size=512",
    "arch.num_heads=8",
    "arch.expansion=4",
    "arch.L_layers=2",
    "arch.H_cycles=3",
    "arch.L_cycles=6",
    "arch.halt_max_steps=16",
    "arch.puzzle_emb_len=16",
    "arch.forward_dtype=bfloat16",
    "arch.no_ACT_continue=true",
]


class Preset(NamedTuple):
    overrides: tuple[str, ...]
    dims: ModelDims


PRESETS = {
    "sudoku-mlp-t": Preset((*_PAPER_ARCH, "arch.mlp_t=true", "arch.pos_encodings=none"), ModelDims(11, 81, 1)),
    "sudoku-att": Preset((*_PAPER_ARCH, "arch.mlp_t=false", "arch.pos_encodings=rope"), ModelDims(11, 81, 1)),
    "arc-att": Preset((*_PAPER_ARCH, "arch.mlp_t=false", "arch.pos_encodings=rope"), ModelDims(12, 900, 1000)),
}

# Small enough that compile + a few steps take seconds on a 2-core CPU (compile time grows with
# the cycle counts). H_cycles != L_cycles + 1 so that a test of the FLOP count can tell them apart.
TINY = ["arch.hidden_size=32", "arch.num_heads=2", "arch.puzzle_emb_len=2", "arch.H_cycles=2", "arch.L_cycles=2"]
DEFAULT_BATCH, TINY_BATCH = 768, 4


def build_config(preset: str, batch_size: int | None, tiny: bool, overrides: list[str]):
    """The validated config: preset, then --tiny, then batch size, then the user's overrides."""
    batch_size = batch_size or (TINY_BATCH if tiny else DEFAULT_BATCH)
    return validate(
        compose(
            "cfg_pretrain",
            [*PRESETS[preset].overrides, *(TINY if tiny else []), f"global_batch_size={batch_size}", *overrides],
        )
    )


def synthetic_batch(dims: ModelDims, local_rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    # Token 0 is padding in the official datasets; use real tokens only.
    return {
        "inputs": rng.integers(1, dims.vocab_size, (local_rows, dims.seq_len), dtype=np.int32),
        "labels": rng.integers(1, dims.vocab_size, (local_rows, dims.seq_len), dtype=np.int32),
        "puzzle_identifiers": rng.integers(0, dims.num_puzzle_identifiers, (local_rows,), dtype=np.int32),
    }


def xla_flops(compiled) -> float | None:
    """XLA's cost-analysis FLOPs; older JAX returns a list with one dict per program."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def run(cfg, dims: ModelDims, steps: int, warmup: int) -> dict:
    """Set up exactly like pretrain_jax.py, compile the train step, time `steps` steady steps."""
    sh = make_shardings(cfg.mesh_model)
    cfg.check_devices(sh.data_size)
    m = setup_model(cfg, dims, total_steps=warmup + steps, sh=sh)
    state, carry = m.state, m.carry
    local = synthetic_batch(dims, cfg.global_batch_size // jax.process_count(), np.random.default_rng(cfg.seed))
    batch = global_batch(local, sh)
    explore = jax.device_put(np.float32(cfg.arch.halt_exploration_prob), sh.replicated)
    train_step = m.steps.train(cfg.arch.H_cycles, cfg.arch.L_cycles)
    t0 = time.perf_counter()
    compiled = train_step.lower(state, carry, batch, explore).compile()
    compile_s = time.perf_counter() - t0

    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        state, carry, metrics = compiled(state, carry, batch, explore)
        # The step is asynchronous: wait for everything it produced, not just the call.
        jax.block_until_ready((state, carry, metrics))
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    ms = 1e3 * np.asarray(times)
    return {
        "compile_s": compile_s,
        "ms_per_step": float(np.median(ms)),
        "ms_p10": float(np.percentile(ms, 10)),
        "ms_p90": float(np.percentile(ms, 90)),
        "xla_flops_per_step": xla_flops(compiled),
        "peak_memory_bytes": peak_memory_bytes(),
    }


def benchmark(args) -> dict:
    cfg = build_config(args.preset, args.global_batch_size, args.tiny, args.override)
    dims = PRESETS[args.preset].dims
    a, B = cfg.arch, cfg.global_batch_size
    timing = run(cfg, dims, args.steps, args.warmup)
    flops = analytic_flops(a, dims, B, a.H_cycles, a.L_cycles)
    peak = args.peak_tflops * 1e12
    device = jax.devices()[0]
    params = num_parameters(
        a, vocab_size=dims.vocab_size, seq_len=dims.seq_len, num_puzzle_identifiers=dims.num_puzzle_identifiers
    )
    return {
        "preset": args.preset,
        "tiny": args.tiny,
        "overrides": args.override,
        "device": f"{device.platform}: {device.device_kind}",
        "num_devices": jax.device_count(),
        "global_batch_size": B,
        "hidden_size": a.hidden_size,
        "num_heads": a.num_heads,
        "expansion": a.expansion,
        "L_layers": a.L_layers,
        "H_cycles": a.H_cycles,
        "L_cycles": a.L_cycles,
        "mlp_t": a.mlp_t,
        "no_ACT_continue": a.no_ACT_continue,
        "seq_len": dims.seq_len,
        "total_len": dims.seq_len + puzzle_prefix_len(a),
        "vocab_size": dims.vocab_size,
        "forward_dtype": a.forward_dtype,
        "num_params": params["model"],
        "steps": args.steps,
        "warmup": args.warmup,
        **timing,
        "examples_per_s": B / (timing["ms_per_step"] / 1e3),
        "flops_per_step": flops["total"],
        "flops_forward": flops["forward"],
        "flops_backward": flops["backward"],
        "peak_tflops": args.peak_tflops,
        "floor_ms": flops["total"] / peak * 1e3,
        "mfu": flops["total"] / (timing["ms_per_step"] / 1e3) / peak,
        "memory_note": None
        if timing["peak_memory_bytes"] is not None
        else "device.memory_stats() has no peak_bytes_in_use on this backend",
    }


def table(r: dict) -> str:
    mem = (
        f"{r['peak_memory_bytes'] / 2**30:.2f} GiB"
        if r["peak_memory_bytes"] is not None
        else f"n/a ({r['memory_note']})"
    )
    xla = f"{r['xla_flops_per_step']:.4g}" if r["xla_flops_per_step"] is not None else "n/a"
    rows = [
        (
            "preset",
            f"{r['preset']}{' (tiny)' if r['tiny'] else ''}, batch {r['global_batch_size']}, "
            f"hidden {r['hidden_size']}, "
            f"H{r['H_cycles']}xL{r['L_cycles']}x{r['L_layers']} layers, {r['forward_dtype']}",
        ),
        ("device", f"{r['device']} x{r['num_devices']}"),
        ("compile", f"{r['compile_s']:.2f} s"),
        ("ms/step", f"{r['ms_per_step']:.2f} (p10 {r['ms_p10']:.2f}, p90 {r['ms_p90']:.2f}) over {r['steps']} steps"),
        ("examples/s", f"{r['examples_per_s']:,.1f}"),
        (
            "FLOPs/step",
            f"{r['flops_per_step']:.4g} analytic (fwd {r['flops_forward']:.4g}, "
            f"bwd {r['flops_backward']:.4g}); XLA {xla}",
        ),
        ("floor", f"{r['floor_ms']:.3g} ms at {r['peak_tflops']:g} TFLOP/s"),
        ("MFU", f"{100 * r['mfu']:.3g}%"),
        ("peak memory", mem),
    ]
    return "\n".join(f"{k:>12}  {v}" for k, v in rows)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), required=True)
    p.add_argument("--global-batch-size", type=int, help=f"default {DEFAULT_BATCH}, or {TINY_BATCH} with --tiny")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense peak of one device (H100 SXM bf16: 989)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--tiny", action="store_true", help="small model and batch for a CPU run in seconds")
    p.add_argument("--override", nargs="*", default=[], help="Hydra overrides applied last, e.g. arch.L_cycles=4")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    result = benchmark(args)
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
