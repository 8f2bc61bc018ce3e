"""scripts/benchmark.py: the tiny suite and the compile-only mode report sane numbers, the FLOP
count follows the formula written out by hand, and the presets are the paper's recipes."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from training.config import compose, validate

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "benchmark.py"
_spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)

# The --tiny config, written out: batch 4, hidden 32, 81 tokens + 2 puzzle positions, H_cycles 2,
# L_cycles 2, 2 layers, expansion 4, 2 ACT steps.
B, D, S, H, L, LAYERS, ACT_STEPS = 4, 32, 83, 2, 2, 2, 2
# SwiGLU widths: round(4 * 32 * 2/3) = 85 and round(4 * 83 * 2/3) = 221, both rounded up to 256.
CHANNEL = 2 * B * S * (D * 2 * 256 + 256 * D)
MLP_T_MIXING = 2 * B * D * (S * 2 * 256 + 256 * S)
ATTENTION_MIXING = 2 * B * S * 4 * D * D + 4 * B * S * S * D


def heads(vocab: int) -> int:
    return 2 * B * S * D * vocab + 2 * B * D * 2


def tiny_forward(token_mixing: int, vocab: int = 11) -> int:
    return H * (L + 1) * LAYERS * (CHANNEL + token_mixing) + heads(vocab)


def tiny_flops(token_mixing: int, vocab: int = 11) -> int:
    """Forward through all H*(L+1)*layers blocks, backward (2x) through the last cycle's blocks."""
    backward = 2 * ((L + 1) * LAYERS * (CHANNEL + token_mixing) + heads(vocab))
    return tiny_forward(token_mixing, vocab) + backward


def run_script(*args: str, out: Path) -> tuple[dict, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--tiny", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def numbers(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from numbers(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from numbers(v)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield tree


def check_memory(m: dict, *, donated: bool) -> None:
    assert m["program_bytes"] == m["argument_bytes"] + m["output_bytes"] - m["alias_bytes"] + m["temp_bytes"]
    assert m["temp_bytes"] > 0 and m["argument_bytes"] > 0 and m["output_bytes"] > 0
    # The train step donates its state and carry, so they come back in place; evaluation donates nothing.
    assert (m["alias_bytes"] > 0) == donated


def test_tiny_suite_reports_every_number(tmp_path):
    r, stdout = run_script("--suite", out=tmp_path / "suite.json")
    assert all(math.isfinite(x) for x in numbers(r))
    assert r["device"].startswith("cpu") and r["tiny"] and r["wall_s"] > 0
    assert benchmark.TINY_XLA_FLAGS in r["xla_flags"]  # --tiny compiles fast

    c = r["ceiling"]
    assert (c["n"], c["dtype"]) == (256, "bfloat16")
    assert 0 < c["best_ms"] <= c["median_ms"]
    assert c["tflops"] == pytest.approx(2 * 256**3 / (c["best_ms"] / 1e3) / 1e12, rel=1e-9)
    assert "bf16 matmul ceiling" in stdout

    mixing = {
        "sudoku-mlp-t": (MLP_T_MIXING, 11),
        "sudoku-att": (ATTENTION_MIXING, 11),
        "maze-att": (ATTENTION_MIXING, 6),
    }
    assert [p["preset"] for p in r["presets"]] == list(mixing)
    for p in r["presets"]:
        token_mixing, vocab = mixing[p["preset"]]
        assert p["preset"] in stdout
        assert (p["global_batch_size"], p["total_len"], p["vocab_size"], p["halt_max_steps"]) == (
            B,
            S,
            vocab,
            ACT_STEPS,
        )
        assert p["compile_s"] > 0 and p["eval_compile_s"] > 0
        assert 0 < p["ms_p10"] <= p["ms_per_step"] <= p["ms_p90"]
        step_s = p["ms_per_step"] / 1e3
        assert p["flops_per_step"] == tiny_flops(token_mixing, vocab)
        assert p["flops_forward"] + p["flops_backward"] == p["flops_per_step"]
        assert p["examples_per_s"] == pytest.approx(B / step_s, rel=1e-9)
        assert p["pct_of_ceiling"] == pytest.approx(100 * p["flops_per_step"] / step_s / (c["tflops"] * 1e12), rel=1e-9)
        assert p["mfu"] == pytest.approx(p["flops_per_step"] / step_s / 989e12, rel=1e-9)
        # Evaluation: every row through all ACT steps, forward only.
        assert p["eval_rows"] == B and p["eval_ms"] > 0
        assert p["eval_flops"] == ACT_STEPS * tiny_forward(token_mixing, vocab)
        assert p["eval_puzzles_per_s"] == pytest.approx(B / (p["eval_ms"] / 1e3), rel=1e-9)
        assert p["eval_pct_of_ceiling"] > 0
        check_memory(p["train_memory"], donated=True)
        check_memory(p["eval_memory"], donated=False)
        # Peak memory is either reported or explained.
        assert (p["peak_memory_bytes"] is None) == (p["memory_note"] is not None)
        assert p["peak_memory_bytes"] is None or p["peak_memory_bytes"] > 0


def test_memory_analysis_compiles_the_paper_config_only(tmp_path):
    r, stdout = run_script("--memory-analysis", "--configs", "paper_arc1", out=tmp_path / "memory.json")
    [p] = r["programs"]
    assert p["config"] == "paper_arc1" and "paper_arc1" in stdout
    # The config's own batch, attention, EMA and ARC's vocabulary; --tiny shrinks the model and sequence.
    assert (p["global_batch_size"], p["mlp_t"], p["ema"], p["vocab_size"], p["seq_len"]) == (768, False, True, 12, 81)
    assert p["compile_s"] > 0 and p["eval_compile_s"] > 0
    assert "ms_per_step" not in p  # nothing ran
    check_memory(p["train_memory"], donated=True)
    check_memory(p["eval_memory"], donated=False)
    # The train step's arguments hold at least the float32 parameters, both Adam moments and the EMA.
    assert p["train_memory"]["argument_bytes"] >= 4 * 4 * p["num_params"]


@pytest.mark.parametrize("name", sorted(benchmark.PRESETS))
def test_presets_are_the_paper_recipes_at_one_devices_batch(name):
    preset = benchmark.PRESETS[name]
    cfg = benchmark.preset_config(name, batch_size=None, tiny=False, overrides=[])
    paper = validate(compose(preset.config))
    # The official Sudoku runs train on one GPU, maze and ARC on four.
    assert cfg.global_batch_size == preset.batch == paper.global_batch_size // (1 if "sudoku" in name else 4)
    assert cfg.model_dump(exclude={"global_batch_size"}) == paper.model_dump(exclude={"global_batch_size"})


def test_attention_flops_match_the_formula():
    cfg = benchmark.preset_config("sudoku-att", batch_size=None, tiny=True, overrides=[])
    flops = benchmark.analytic_flops(cfg.arch, benchmark.dims_for("paper_sudoku_att", tiny=True), B, H, L)
    assert flops["total"] == tiny_flops(ATTENTION_MIXING)


def test_q_target_pass_adds_one_forward():
    cfg = benchmark.preset_config("sudoku-att", batch_size=None, tiny=True, overrides=["arch.no_ACT_continue=false"])
    flops = benchmark.analytic_flops(cfg.arch, benchmark.dims_for("paper_sudoku_att", tiny=True), B, H, L)
    assert flops["total"] == tiny_flops(ATTENTION_MIXING) + tiny_forward(ATTENTION_MIXING)


def test_paper_presets_match_the_official_floor_ratio():
    """The official analysis puts the matmul floors at 44.8 ms (MLP-T) and 49.9 ms (attention)
    at batch 768. Their ratio does not depend on the peak assumed, so it checks the count."""
    floors = {}
    for preset in ("sudoku-mlp-t", "sudoku-att"):
        cfg = benchmark.preset_config(preset, batch_size=768, tiny=False, overrides=[])
        dims = benchmark.dims_for(benchmark.PRESETS[preset].config, tiny=False)
        floors[preset] = benchmark.analytic_flops(cfg.arch, dims, 768, cfg.arch.H_cycles, cfg.arch.L_cycles)["total"]
    assert floors["sudoku-att"] / floors["sudoku-mlp-t"] == pytest.approx(49.9 / 44.8, rel=2e-3)


def test_a_failing_preset_is_recorded_and_the_next_still_runs(tmp_path, monkeypatch, capsys):
    def measure(name, cfg, dims, **kwargs):
        if name == "sudoku-mlp-t":
            raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 9 GiB\ndetails")
        return {"preset": name, "ms_per_step": 1.0}

    monkeypatch.setattr(benchmark, "measure_preset", measure)
    monkeypatch.setattr(benchmark, "preset_text", lambda r: f"{r['preset']} measured")
    out = tmp_path / "r.json"
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["--preset", "sudoku-mlp-t", "sudoku-att", "--json", str(out)])
    assert exit_info.value.code == 1
    assert json.loads(out.read_text())["presets"] == [
        {"preset": "sudoku-mlp-t", "error": "RESOURCE_EXHAUSTED: Out of memory allocating 9 GiB"},
        {"preset": "sudoku-att", "ms_per_step": 1.0},
    ]
    assert "sudoku-mlp-t: FAILED: RESOURCE_EXHAUSTED" in capsys.readouterr().out
