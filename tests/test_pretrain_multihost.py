"""One global batch, any layout: several cooperating processes, several devices, or gradient
accumulation compute the same training run as one process on one device."""

from __future__ import annotations

import pytest

from tests.pretrain_runs import (
    assert_losses_close,
    assert_ok,
    assert_trees_close,
    eval_row,
    losses,
    pretrain_cmd,
    restore,
    run,
    run_env,
    train_args,
)

# Only the reduction order over rows differs between layouts (float32).
RTOL = 1e-4


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("num_processes,devices_per_process", [(2, 2), (4, 1)])
def test_multi_process_run_matches_single_process(launched, reference, num_processes, devices_per_process):
    run_dir = launched(num_processes, devices_per_process)

    assert_losses_close(losses(run_dir), reference["losses"], RTOL)
    state, _, step = restore(str(run_dir / "checkpoints"))
    assert step == reference["step"]
    assert_trees_close(state["params"], reference["state"]["params"], rtol=RTOL, atol=1e-6)
    # Evaluation: every process reads its share of each test batch; the metrics are global.
    got, want = eval_row(run_dir), reference["eval"]
    assert got.keys() == want.keys()
    for key in want:
        if key.endswith("/count") or key.endswith("halt_step_hist"):
            assert got[key] == want[key], key
        elif key.startswith("eval/"):
            assert got[key] == pytest.approx(want[key], rel=RTOL, abs=1e-6), key


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_gradient_accumulation_matches_one_big_batch(tmp_path, data, compile_cache, reference):
    run_dir = tmp_path / "run"
    assert_ok(
        run(
            pretrain_cmd(train_args(data, run_dir, "grad_accum_steps=2")),
            run_env(compile_cache),
            tmp_path / "log.txt",
            timeout=100,
        )
    )

    assert_losses_close(losses(run_dir), reference["losses"], RTOL)
    state, carry, _ = restore(str(run_dir / "checkpoints"))
    assert_trees_close(state["params"], reference["state"]["params"], rtol=RTOL, atol=1e-6)
    assert_trees_close(state["opt_state"], reference["state"]["opt_state"], rtol=RTOL, atol=1e-6)
    assert_trees_close(state["puzzle_emb"], reference["state"]["puzzle_emb"], rtol=RTOL, atol=1e-6)
    assert (carry["halted"] == reference["carry"]["halted"]).all()
