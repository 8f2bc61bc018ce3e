"""The parity acceptance test: the JAX model reproduces the official PyTorch fixtures."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "trm_reference"
BF16_FIXTURES = REPO.parent / "shared" / "fixtures" / "trm_bf16"


def _run(*dirs):
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check_parity.py"), *map(str, dirs)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


@pytest.mark.timeout(300)
def test_shipped_fixtures_pass():
    out = _run(FIXTURES)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = out.stdout.strip().splitlines()[-1]
    assert summary.endswith(" 0 failed"), summary
    # Every case of the folder was compared, including gradients and teacher-forced steps.
    for needle in (
        "mlp_t:grad/",
        "att_rope:train/3[teacher-forced]/z_H",
        "att_learned:eval/4[chained]/logits",
        "adam_atan2:param/4",
        "signsgd:table_after",
        "stablemax:grad_logits",
        "lr_schedule:lr/min_ratio_0.1",
    ):
        assert needle in out.stdout


def _copy_case(tmp_path, case, source=FIXTURES):
    for ext in ("json", "npz"):
        shutil.copy(source / f"{case}.{ext}", tmp_path / f"{case}.{ext}")
    return tmp_path


def _line(stdout, name):
    """The report line of check `name` (e.g. 'mlp_t:eval/1[chained]/logits')."""
    lines = [ln for ln in stdout.splitlines() if re.match(rf"(ok  |FAIL) {re.escape(name)}\s", ln)]
    assert len(lines) == 1, (name, stdout[-3000:])
    return lines[0]


@pytest.mark.timeout(300)
def test_perturbed_weight_fails(tmp_path):
    """A 1e-3 change to one official weight must be caught (the check can fail)."""
    _copy_case(tmp_path, "att_learned")
    arrays = dict(np.load(tmp_path / "att_learned.npz"))
    key = "param/model.inner.L_level.layers.1.mlp.down_proj.weight"
    arrays[key] = arrays[key] + np.float32(1e-3)
    np.savez(tmp_path / "att_learned.npz", **arrays)
    out = _run(tmp_path)
    assert out.returncode == 1
    assert "FAIL att_learned:train/1[chained]/logits" in out.stdout


@pytest.mark.timeout(120)
def test_wrong_optimizer_variant_fails(tmp_path):
    """The adam-atan2 0.0.2 rule (bias correction inside atan2) differs from the 0.0.3 golden."""
    _copy_case(tmp_path, "adam_atan2")
    arrays = dict(np.load(tmp_path / "adam_atan2.npz"))
    for k in range(1, 5):
        arrays[f"param/{k}"] = arrays[f"variant/adam_atan2_0.0.2/param/{k}"]
    np.savez(tmp_path / "adam_atan2.npz", **arrays)
    out = _run(tmp_path)
    assert out.returncode == 1 and "FAIL adam_atan2:param/" in out.stdout


@pytest.mark.timeout(60)
def test_uncompared_arrays_fail(tmp_path):
    _copy_case(tmp_path, "signsgd")
    arrays = dict(np.load(tmp_path / "signsgd.npz"))
    arrays["surprise"] = np.zeros(3)
    np.savez(tmp_path / "signsgd.npz", **arrays)
    out = _run(tmp_path)
    assert out.returncode == 1 and "signsgd:surprise" in out.stdout and "not compared" in out.stdout


def test_empty_directory_fails(tmp_path):
    out = _run(tmp_path)
    assert out.returncode == 1


@pytest.mark.timeout(300)
def test_step1_uses_the_sidecar_atol(tmp_path):
    """At step 1 too, an array is held to its sidecar atol (9e-5 for mlp_t's eval/1 logits), not a
    fixed 1e-5: a shift of 5e-5 passes, one of 1.5e-4 fails."""
    atol = json.loads((FIXTURES / "mlp_t.json").read_text())["float32_noise"]["per_key"]["eval/1/logits"]
    assert atol["suggested_atol_chained"] == 9e-5
    for shift, ok in ((5e-5, True), (1.5e-4, False)):
        _copy_case(tmp_path, "mlp_t")
        arrays = dict(np.load(tmp_path / "mlp_t.npz"))
        arrays["eval/1/logits"] = arrays["eval/1/logits"] + np.float32(shift)
        np.savez(tmp_path / "mlp_t.npz", **arrays)
        line = _line(_run(tmp_path).stdout, "mlp_t:eval/1[chained]/logits")
        assert line.startswith("ok  " if ok else "FAIL") and "atol=9e-05" in line, line
        # Every element is now off by more than 4e-5, beyond a fixed atol 1e-5 + rtol 1e-5 x |logit|
        # wherever |logit| < 3.
        assert float(re.search(r"max_err=(\S+)", line).group(1)) > 4e-5
        assert np.min(np.abs(arrays["eval/1/logits"])) < 3


# ---------------------------------------------------------------- bf16 fixtures


@pytest.mark.timeout(300)
def test_bf16_fixtures_pass():
    out = _run(BF16_FIXTURES)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1].endswith(" 0 failed")
    assert "--xla_allow_excess_precision=false" in out.stdout.splitlines()[0]
    for needle in (
        "mlp_t:train/1[step-1]/logits",
        "mlp_t:train/3[teacher-forced]/z_L",
        "att_rope:eval/4[teacher-forced]/q_halt_logits",
        "att_rope:train/1[step-1]/grad/model.inner.L_level.layers.0.self_attn.qkv_proj.weight",
        "att_rope:eval/2[teacher-forced]/argmax@stable",
        "mlp_t:eval/4[teacher-forced]/halted",
    ):
        assert needle in out.stdout
    ratios = [float(r) for r in re.findall(r"ratio=(\S+) \(limit 1.5\)", out.stdout)]
    assert len(ratios) > 100 and max(ratios) <= 1.5


@pytest.mark.timeout(300)
def test_bf16_perturbed_weight_fails(tmp_path):
    """1e-3 on one official weight (a few bf16 ulps) moves step 1 by more than 1.5x bf16 rounding."""
    _copy_case(tmp_path, "mlp_t", BF16_FIXTURES)
    arrays = dict(np.load(tmp_path / "mlp_t.npz"))
    key = "param/model.inner.L_level.layers.1.mlp.down_proj.weight"
    arrays[key] = arrays[key] + np.float32(1e-3)
    np.savez(tmp_path / "mlp_t.npz", **arrays)
    out = _run(tmp_path)
    assert out.returncode == 1
    assert _line(out.stdout, "mlp_t:train/1[step-1]/z_H").startswith("FAIL")


@pytest.mark.timeout(300)
def test_bf16_wrong_halting_wrong_argmax_and_uncompared_arrays_fail(tmp_path):
    _copy_case(tmp_path, "mlp_t", BF16_FIXTURES)
    arrays = dict(np.load(tmp_path / "mlp_t.npz"))
    # (a) a halting decision the model does not make: mlp_t halts rows [1, 1, 0, 1] at train step 1.
    arrays["train/1/halted"] = arrays["train/1/halted"].copy()
    arrays["train/1/halted"][2] = True
    # (b) a different argmax at a stable position: swap the top two logits where the gap is largest.
    logits = arrays["eval/3/logits"].copy()
    top2 = np.sort(logits, axis=-1)[..., -2:]
    pos = np.unravel_index(np.argmax(top2[..., 1] - top2[..., 0]), top2.shape[:-1])
    order = np.argsort(logits[pos])
    logits[pos + (order[-1],)], logits[pos + (order[-2],)] = logits[pos + (order[-2],)], logits[pos + (order[-1],)]
    arrays["eval/3/logits"] = logits
    arrays["surprise"] = np.zeros(3)
    np.savez(tmp_path / "mlp_t.npz", **arrays)
    out = _run(tmp_path)
    assert out.returncode == 1
    assert _line(out.stdout, "mlp_t:train/1[step-1]/halted").startswith("FAIL")
    assert _line(out.stdout, "mlp_t:eval/3[teacher-forced]/argmax@stable").startswith("FAIL")
    assert _line(out.stdout, "mlp_t:surprise").startswith("FAIL") and "not compared" in out.stdout


def test_bf16_trace_without_yardstick_fails(tmp_path):
    _copy_case(tmp_path, "att_rope", BF16_FIXTURES)
    meta = json.loads((tmp_path / "att_rope.json").read_text())
    del meta["bf16_vs_fp32"]
    (tmp_path / "att_rope.json").write_text(json.dumps(meta))
    out = _run(tmp_path)
    assert out.returncode == 1 and "without a bf16_vs_fp32 yardstick" in out.stdout
