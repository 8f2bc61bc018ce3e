"""scripts/export_official.py: a saved run's weights as an official PyTorch state_dict."""

from __future__ import annotations

import shlex
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
from omegaconf import OmegaConf

from models.act import initial_carry
from models.torch_import import COMPILED_PREFIX, import_state_dict
from models.trm import ModelDims, build_model, init_variables
from scripts.export_official import conversion_command, load_trained_weights, main
from tests.pretrain_runs import REPO, assert_trees_equal
from training.checkpointing import Checkpointer
from training.config import compose, validate
from training.optimizers import build_optimizer
from training.state import create_train_state

DIMS = ModelDims(vocab_size=6, seq_len=16, num_puzzle_identifiers=3)
ARCH = ["arch.hidden_size=32", "arch.num_heads=2", "arch.L_layers=1", "arch.forward_dtype=bfloat16"]


def _cfg(*overrides: str):
    return validate(compose("quickstart", [*ARCH, "ema=true", *overrides]))


def _state(cfg, seed: int, dims: ModelDims = DIMS):
    """A train state of random numbers in the real shapes and dtypes (no compilation), so the
    EMA weights, the raw weights and the puzzle table all differ and a test can tell which one
    was exported."""
    model = build_model(cfg.arch, dims)
    tx = build_optimizer(cfg, 100)
    shapes = jax.eval_shape(lambda: create_train_state(cfg, model, tx, dims.num_puzzle_identifiers))
    rng = np.random.default_rng(seed)
    state = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)
    carry = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(lambda: initial_carry(model, 4)))
    return state, carry


def _save(directory: str, cfg, steps=(3, 5)) -> dict[int, object]:
    ckpt = Checkpointer(directory, cfg, steps_per_eval=1, run_id="export-test", dataset={})
    states = {}
    for step in steps:
        states[step], carry = _state(cfg, seed=step)
        ckpt.save(step, states[step], carry, {"sampler": {}, "epochs_done": 0})
    ckpt.close()
    return {s: jax.tree.map(np.asarray, st) for s, st in states.items()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory with its checkpoints (steps 3 and 5) in checkpoints/."""
    run_dir = tmp_path_factory.mktemp("run")
    cfg = _cfg()
    return run_dir, _save(str(run_dir / "checkpoints"), cfg), cfg


def _imported(path, cfg):
    template = jax.eval_shape(lambda: init_variables(build_model(cfg.arch, DIMS), jax.random.key(0)))
    return import_state_dict(dict(np.load(path)), template)


def test_exports_the_ema_weights_of_the_newest_step_by_default(run, tmp_path, capsys):
    run_dir, states, cfg = run
    out = tmp_path / "trm.npz"
    assert main([str(run_dir), str(out)]) == 0
    assert "wrote the EMA weights of step 5" in capsys.readouterr().out
    params, buffers, table = _imported(out, cfg)
    assert_trees_equal(params, states[5].ema_params)
    assert_trees_equal(buffers, states[5].buffers)
    assert table.tobytes() == states[5].puzzle_emb.tobytes()
    assert all(name.startswith("model.inner.") for name in np.load(out).files)


@pytest.mark.parametrize("where", ["checkpoints", "checkpoints/3"])
def test_raw_weights_of_a_chosen_step_from_a_checkpoint_or_step_directory(run, tmp_path, where):
    run_dir, states, cfg = run
    out = tmp_path / "raw.npz"
    assert main([str(run_dir / where), str(out), "--raw", "--step", "3"]) == 0
    params, _, table = _imported(out, cfg)
    assert_trees_equal(params, states[3].params)
    assert table.tobytes() == states[3].puzzle_emb.tobytes()


def test_a_run_without_ema_exports_its_raw_weights_and_says_so(tmp_path, capsys):
    cfg = _cfg("ema=false")
    states = _save(str(tmp_path / "ckpt"), cfg, steps=(2,))
    out = tmp_path / "trm.npz"
    assert main([str(tmp_path / "ckpt"), str(out)]) == 0
    assert "raw (the run kept no EMA weights)" in capsys.readouterr().out
    assert_trees_equal(_imported(out, cfg)[0], states[2].params)


def test_compiled_names_carry_the_torch_compile_prefix(run, tmp_path):
    run_dir, _, _ = run
    out = tmp_path / "trm.npz"
    assert main([str(run_dir), str(out), "--compiled-names"]) == 0
    assert all(name.startswith(COMPILED_PREFIX + "model.inner.") for name in np.load(out).files)


def test_checkpoints_on_gcs_are_found_through_the_run_config(gcs_emulator, tmp_path):
    root = f"gs://{gcs_emulator['bucket']}/export"
    cfg = _cfg(f"checkpoint_root={root}", "experiment_group=g", "experiment_name=n")
    states = _save(f"{root}/g/n", cfg, steps=(4,))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    OmegaConf.save(OmegaConf.create(cfg.model_dump()), run_dir / "config.yaml")
    weights = load_trained_weights(str(run_dir))
    assert weights.checkpoint_dir == f"{root}/g/n" and weights.step == 4 and weights.ema
    assert_trees_equal(weights.variables["params"], states[4].ema_params)


class _FakeTorch(types.ModuleType):
    """Enough of torch to run the .pt writer and the conversion command without torch."""

    bfloat16, float16, float32 = "bfloat16", "float16", "float32"

    def __init__(self):
        super().__init__("torch")
        self.saved = {}

    def from_numpy(self, array):
        return types.SimpleNamespace(to=lambda dtype: (np.asarray(array).copy(), dtype))

    def save(self, obj, f):
        self.saved = obj
        (open(f, "wb") if isinstance(f, str) else f).write(b"pt")


def test_pt_output_holds_float32_weights_and_buffers_in_the_forward_dtype(run, tmp_path, monkeypatch):
    run_dir, states, _ = run
    torch = _FakeTorch()
    monkeypatch.setitem(sys.modules, "torch", torch)
    assert main([str(run_dir), str(tmp_path / "trm.pt")]) == 0
    assert (tmp_path / "trm.pt").read_bytes() == b"pt"
    dtypes = {name: dtype for name, (_, dtype) in torch.saved.items()}
    assert dtypes.pop("model.inner.H_init") == dtypes.pop("model.inner.L_init") == "bfloat16"
    assert set(dtypes.values()) == {"float32"}


def test_without_torch_pt_output_is_refused_with_the_npz_conversion(run, tmp_path, monkeypatch, capsys):
    run_dir, _, _ = run
    monkeypatch.setitem(sys.modules, "torch", None)
    assert main([str(run_dir), str(tmp_path / "trm.pt")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "torch" in err and str(tmp_path / "trm.npz") in err
    assert list(tmp_path.iterdir()) == []


def test_the_conversion_command_writes_the_official_dtypes(run, tmp_path, monkeypatch):
    run_dir, _, _ = run
    npz, pt = tmp_path / "trm.npz", tmp_path / "trm.pt"
    assert main([str(run_dir), str(npz)]) == 0
    command = conversion_command(str(npz), str(pt), "bfloat16")
    python, flag, code = shlex.split(command)
    assert (python, flag) == ("python", "-c")
    torch = _FakeTorch()
    monkeypatch.setitem(sys.modules, "torch", torch)
    exec(code, {})
    assert set(torch.saved) == set(np.load(npz).files) and pt.read_bytes() == b"pt"
    assert torch.saved["model.inner.L_init"][1] == "bfloat16"
    assert torch.saved["model.inner.lm_head.weight"][1] == "float32"


def test_an_existing_output_is_kept_unless_forced(run, tmp_path, capsys):
    run_dir, _, _ = run
    out = tmp_path / "trm.npz"
    out.write_bytes(b"mine")
    assert main([str(run_dir), str(out)]) == 1
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b"mine"
    assert main([str(run_dir), str(out), "--force"]) == 0
    assert len(np.load(out).files) > 0


@pytest.mark.parametrize(
    "source, message",
    [
        ("missing-run", "no such run or checkpoint directory"),
        ("not-a-run", "neither a run directory"),
        ("empty-run", "has no checkpoint yet"),
        ("checkpoints --step 9", "no step 9 in"),
    ],
)
def test_bad_sources_fail_with_one_line(run, tmp_path, source, message):
    run_dir, _, _ = run
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "not-a-run" / "notes.txt").write_text("hello")
    (tmp_path / "empty-run" / "checkpoints").mkdir(parents=True)
    path, *extra = source.split()
    base = run_dir if path == "checkpoints" else tmp_path
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "export_official.py"),
            str(base / path),
            str(tmp_path / "o.npz"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "o.npz").exists() and (tmp_path / "not-a-run" / "notes.txt").read_text() == "hello"
