"""Every config composes and validates; bad values fail with messages that say what to fix."""

import re
from pathlib import Path

import pytest

from training.config import ConfigError, apply_smoke, compose, validate

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["quickstart", "cfg_pretrain"])
def test_base_configs_validate(name):
    cfg = validate(compose(name))
    assert cfg.arch.name == "trm"


def test_official_defaults():
    cfg = validate(compose("cfg_pretrain"))
    a = cfg.arch
    assert (a.H_cycles, a.L_cycles, a.L_layers, a.hidden_size, a.num_heads, a.expansion) == (3, 6, 2, 512, 8, 4)
    assert (a.halt_max_steps, a.halt_exploration_prob, a.puzzle_emb_len, a.puzzle_emb_ndim) == (16, 0.1, 16, 512)
    assert a.pos_encodings == "rope" and a.forward_dtype == "bfloat16" and a.no_ACT_continue and not a.mlp_t
    assert (cfg.global_batch_size, cfg.lr, cfg.lr_min_ratio, cfg.lr_warmup_steps) == (768, 1e-4, 1.0, 2000)
    assert (cfg.weight_decay, cfg.puzzle_emb_lr, cfg.puzzle_emb_weight_decay, cfg.beta2) == (0.1, 1e-2, 0.1, 0.95)
    assert cfg.optimizer == "adam_atan2" and not cfg.ema


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["+arch.hiden_size=3"], "arch.hiden_size: unknown key"),
        (["lr=fast"], "lr: Input should be a valid number"),
        (["arch.num_heads=3"], "not divisible by num_heads=3"),
        (["arch.halt_exploration_prob=1.5"], "arch.halt_exploration_prob: Input should be less than or equal to 1"),
        (["lr=0"], "lr: Input should be greater than 0"),
        (["lr=-1e-3"], "lr: Input should be greater than 0"),
        (["lr=inf"], "lr: Input should be a finite number"),
        (["weight_decay=-0.1"], "weight_decay: Input should be greater than or equal to 0"),
        (["puzzle_emb_lr=-1"], "puzzle_emb_lr: Input should be greater than or equal to 0"),
        (["ema_rate=1.0"], "ema_rate: Input should be less than 1"),
        (["ema_rate=0"], "ema_rate: Input should be greater than 0"),
        (["beta2=1.0"], "beta2: Input should be less than 1"),
        (["epochs=0"], "epochs: Input should be greater than or equal to 1"),
        (["eval_interval=0"], "eval_interval: Input should be greater than or equal to 1"),
        (["log_every_steps=0"], "log_every_steps: Input should be greater than or equal to 1"),
        (["max_to_keep=0"], "max_to_keep: Input should be greater than or equal to 1"),
        (["seed=-1"], "seed: Input should be greater than or equal to 0"),
        (["arch.halt_max_steps=0"], "arch.halt_max_steps: Input should be greater than or equal to 1"),
        (["arch.H_cycles=0"], "arch.H_cycles: Input should be greater than or equal to 1"),
        (["arch.L_layers=0"], "arch.L_layers: Input should be greater than or equal to 1"),
        (["arch.expansion=0"], "arch.expansion: Input should be greater than 0"),
        (["arch.num_heads=4", "arch.hidden_size=36"], "rope needs an even head dimension"),
        (["arch.puzzle_emb_ndim=200", "arch.puzzle_emb_len=1"], "does not fit in puzzle_emb_len=1"),
        (["halt_exploration_schedule.start=1.5"], "halt_exploration_schedule.start: Input should be less than"),
        (["max_steps=0"], "max_steps: Input should be greater than or equal to 1"),
        (["checkpoint_every_steps=0"], "checkpoint_every_steps: Input should be greater than or equal to 1"),
        (["resume=always"], "resume: Input should be 'auto', 'never' or 'must'"),
        (["evaluators=[{name:arcc}]"], "unknown evaluators ['arcc']"),
        (["global_batch_size=10", "grad_accum_steps=4"], "not divisible by grad_accum_steps=4"),
        (["epochs=25", "eval_interval=10"], "multiple of eval_interval"),
        (["optimizer=sgd"], "optimizer: Input should be 'adam_atan2', 'adamw' or 'lion'"),
    ],
)
def test_invalid_values_are_explained(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(compose("quickstart", overrides))


def test_device_split_is_checked():
    cfg = validate(compose("quickstart", ["global_batch_size=12"]))
    with pytest.raises(ConfigError, match="multiple of 8"):
        cfg.check_devices(8)
    cfg.check_devices(4)


def test_smoke_shrinks_but_keeps_what_the_experiment_varies():
    raw = compose("quickstart", ["smoke.enabled=true", "arch.L_cycles=5", "optimizer=lion", "run_dir=/tmp/x"])
    cfg = validate(apply_smoke(raw))
    assert cfg.arch.hidden_size == cfg.smoke.hidden_size and cfg.max_steps == cfg.smoke.max_steps
    assert cfg.arch.L_cycles == 5 and cfg.optimizer == "lion"
    assert cfg.data_paths == ["/tmp/x/smoke_data"] and cfg.data_generator == "smoke"


def test_smoke_runs_never_write_where_the_real_experiment_does():
    raw = compose("quickstart", ["smoke.enabled=true", "checkpoint_root=gs://bucket/trm"])
    cfg = validate(apply_smoke(raw))
    real = validate(compose("quickstart"))
    assert cfg.run_dir == f"runs/smoke/{real.experiment_group}/{real.experiment_name}"
    assert cfg.checkpoint_root is None and cfg.smoke.enabled


def test_absurd_epochs_are_refused_before_training():
    cfg = validate(compose("quickstart", ["epochs=100000000000", "eval_interval=20"]))
    with pytest.raises(ConfigError, match="choose epochs"):
        cfg.total_steps(1000, 1.0)


def test_every_yaml_composes():
    names = [p.stem for p in CONFIGS.glob("*.yaml")] + [p.stem for p in (CONFIGS / "experiments").glob("*.yaml")]
    assert "quickstart" in names
    for name in names:
        validate(compose(name))
