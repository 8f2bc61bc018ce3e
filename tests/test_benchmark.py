"""scripts/benchmark.py: the tiny CPU run reports sane timings and the analytic FLOP count."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "benchmark.py"
_spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)

# The --tiny config, written out: batch 4, hidden 32, vocab 11, 81 tokens + 2 puzzle positions,
# H_cycles 2, L_cycles 2, 2 layers, expansion 4.
B, D, V, S, H, L, LAYERS = 4, 32, 11, 83, 2, 2, 2
# SwiGLU widths: round(4 * 32 * 2/3) = 85 and round(4 * 83 * 2/3) = 221, both rounded up to 256.
CHANNEL = 2 * B * S * (D * 2 * 256 + 256 * D)
HEADS = 2 * B * S * D * V + 2 * B * D * 2


def tiny_flops(token_mixing: int) -> int:
    """Forward through all H*(L+1)*layers blocks, backward (2x) through the last cycle's blocks."""
    block = CHANNEL + token_mixing
    return H * (L + 1) * LAYERS * block + HEADS + 2 * ((L + 1) * LAYERS * block + HEADS)


MLP_T_MIXING = 2 * B * D * (S * 2 * 256 + 256 * S)
ATTENTION_MIXING = 2 * B * S * 4 * D * D + 4 * B * S * S * D


def test_tiny_cpu_run_reports_consistent_values(tmp_path):
    out = tmp_path / "bench.json"
    # The subprocess inherits conftest's XLA_FLAGS (unoptimised CPU code compiles twice as fast).
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--preset",
            "sudoku-mlp-t",
            "--tiny",
            "--steps",
            "3",
            "--warmup",
            "1",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ms/step" in proc.stdout
    r = json.loads(out.read_text())

    assert (r["global_batch_size"], r["hidden_size"], r["total_len"], r["H_cycles"], r["L_cycles"]) == (B, D, S, H, L)
    assert r["compile_s"] > 0
    assert 0 < r["ms_p10"] <= r["ms_per_step"] <= r["ms_p90"]
    assert r["examples_per_s"] == pytest.approx(B / (r["ms_per_step"] / 1e3), rel=1e-9)
    assert r["flops_per_step"] == tiny_flops(MLP_T_MIXING)
    assert r["flops_forward"] + r["flops_backward"] == r["flops_per_step"]
    assert r["mfu"] == pytest.approx(r["flops_per_step"] / (r["ms_per_step"] / 1e3) / 989e12, rel=1e-9)
    assert r["floor_ms"] == pytest.approx(r["flops_per_step"] / 989e12 * 1e3, rel=1e-9)
    assert r["xla_flops_per_step"] is None or r["xla_flops_per_step"] > 0
    # Peak memory is either reported or explained.
    assert (r["peak_memory_bytes"] is None) == (r["memory_note"] is not None)
    assert r["peak_memory_bytes"] is None or r["peak_memory_bytes"] > 0
    assert r["device"]


def test_attention_flops_match_the_formula():
    cfg = benchmark.build_config("sudoku-att", None, True, [])
    dims = benchmark.PRESETS["sudoku-att"].dims
    flops = benchmark.analytic_flops(cfg.arch, dims, B, H, L)
    assert flops["total"] == tiny_flops(ATTENTION_MIXING)


def test_q_target_pass_adds_one_forward():
    cfg = benchmark.build_config("sudoku-att", None, True, ["arch.no_ACT_continue=false"])
    dims = benchmark.PRESETS["sudoku-att"].dims
    flops = benchmark.analytic_flops(cfg.arch, dims, B, H, L)
    forward = H * (L + 1) * LAYERS * (CHANNEL + ATTENTION_MIXING) + HEADS
    assert flops["total"] == tiny_flops(ATTENTION_MIXING) + forward


def test_paper_presets_match_the_official_floor_ratio():
    """The official analysis puts the matmul floors at 44.8 ms (MLP-T) and 49.9 ms (attention)
    at batch 768. Their ratio does not depend on the peak assumed, so it checks the count."""
    floors = {}
    for preset in ("sudoku-mlp-t", "sudoku-att"):
        cfg = benchmark.build_config(preset, 768, False, [])
        a = cfg.arch
        floors[preset] = benchmark.analytic_flops(a, benchmark.PRESETS[preset].dims, 768, a.H_cycles, a.L_cycles)[
            "total"
        ]
    assert floors["sudoku-att"] / floors["sudoku-mlp-t"] == pytest.approx(49.9 / 44.8, rel=2e-3)
