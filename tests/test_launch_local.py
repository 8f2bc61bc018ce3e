"""scripts/launch_local.py: N local processes that form one jax.distributed job."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

LAUNCHER = Path(__file__).resolve().parent.parent / "scripts" / "launch_local.py"
_spec = importlib.util.spec_from_file_location("launch_local", LAUNCHER)
launch_local = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(launch_local)

# Joins a real jax.distributed job from the launcher's variables and checks that a
# cross-process collective sees every process.
JAX_WORKER = """
import os, sys
import jax
import numpy as np
from jax.experimental import multihost_utils

jax.distributed.initialize(
    coordinator_address=os.environ["TRM_COORDINATOR_ADDRESS"],
    num_processes=int(os.environ["TRM_NUM_PROCESSES"]),
    process_id=int(os.environ["TRM_PROCESS_ID"]),
    initialization_timeout=30,
)
devices_per_process = int(sys.argv[1])
assert jax.local_device_count() == devices_per_process, jax.local_devices()
assert jax.device_count() == jax.process_count() * devices_per_process, jax.devices()
gathered = multihost_utils.process_allgather(np.int32(jax.process_index()))
assert gathered.tolist() == list(range(jax.process_count())), gathered
print(f"process {jax.process_index()} gathered {gathered.tolist()}")
jax.distributed.shutdown()
"""

ENV_WORKER = """
import json, os, sys
keys = ["JAX_PLATFORMS", "XLA_FLAGS", "TRM_COORDINATOR_ADDRESS", "TRM_NUM_PROCESSES", "TRM_PROCESS_ID"]
print(json.dumps({"argv": sys.argv[1:], **{k: os.environ[k] for k in keys}}))
"""

# Process 1 dies at once; the others would wait for it forever.
FAILING_WORKER = """
import os, sys, time
if os.environ["TRM_PROCESS_ID"] == "1":
    print("process 1: fatal error here")
    sys.exit(3)
time.sleep(300)
"""

SLEEPING_WORKER = "import time; time.sleep(300)\n"


def _script(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "worker.py"
    path.write_text(textwrap.dedent(source))
    return path


def test_process_env_appends_to_existing_xla_flags():
    env = launch_local.process_env(
        {"XLA_FLAGS": "--xla_dump_to=/tmp/x", "KEEP": "1"},
        coordinator="127.0.0.1:1234",
        num_processes=4,
        process_id=2,
        devices_per_process=8,
    )
    assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=8"
    assert env["KEEP"] == "1"
    assert (env["TRM_COORDINATOR_ADDRESS"], env["TRM_NUM_PROCESSES"], env["TRM_PROCESS_ID"]) == (
        "127.0.0.1:1234",
        "4",
        "2",
    )


def test_parse_args_splits_script_arguments_at_double_dash():
    opts, rest = launch_local.parse_args(
        ["--num-processes", "2", "--timeout", "9", "--", "--config-name", "quickstart", "smoke.enabled=true"]
    )
    assert (opts.num_processes, opts.devices_per_process, opts.timeout) == (2, 1, 9.0)
    assert opts.script.endswith("pretrain_jax.py")
    assert rest == ["--config-name", "quickstart", "smoke.enabled=true"]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_cli_streams_process_0_and_logs_the_others(tmp_path):
    script = _script(tmp_path, ENV_WORKER)
    logs = tmp_path / "logs"
    result = subprocess.run(
        [
            sys.executable,
            str(LAUNCHER),
            "--num-processes",
            "2",
            "--devices-per-process",
            "3",
            "--timeout",
            "50",
            "--log-dir",
            str(logs),
            "--script",
            str(script),
            "--",
            "a=1",
            "--b",
        ],
        capture_output=True,
        text=True,
        timeout=55,
    )
    assert result.returncode == 0, result.stderr
    streamed = json.loads(result.stdout.strip())
    logged = json.loads((logs / "process_1.log").read_text())
    assert streamed["TRM_PROCESS_ID"] == "0" and logged["TRM_PROCESS_ID"] == "1"
    assert json.loads((logs / "process_0.log").read_text()) == streamed
    for env in (streamed, logged):
        assert env["argv"] == ["a=1", "--b"]
        assert env["JAX_PLATFORMS"] == "cpu"
        assert env["XLA_FLAGS"].endswith("--xla_force_host_platform_device_count=3")
        assert env["TRM_NUM_PROCESSES"] == "2"
        assert env["TRM_COORDINATOR_ADDRESS"].startswith("127.0.0.1:")
    assert streamed["TRM_COORDINATOR_ADDRESS"] == logged["TRM_COORDINATOR_ADDRESS"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_real_jax_distributed_job_two_processes_two_devices(tmp_path, capfd):
    script = _script(tmp_path, JAX_WORKER)
    code = launch_local.launch(2, ["2"], devices_per_process=2, timeout=100, log_dir=tmp_path / "logs", script=script)
    out = capfd.readouterr().out
    assert code == 0, out + (tmp_path / "logs" / "process_1.log").read_text()
    assert "process 0 gathered [0, 1]" in out
    assert "process 1 gathered [0, 1]" in (tmp_path / "logs" / "process_1.log").read_text()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_failing_process_stops_the_group_with_its_exit_code(tmp_path, capfd):
    script = _script(tmp_path, FAILING_WORKER)
    start = time.monotonic()
    code = launch_local.launch(3, [], timeout=50, log_dir=tmp_path / "logs", script=script, grace=2)
    assert code == 3
    assert time.monotonic() - start < 20
    # The failing process's log tail is shown, although only process 0 streams.
    assert "process 1: fatal error here" in capfd.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_timeout_kills_all_and_exits_124(tmp_path):
    script = _script(tmp_path, SLEEPING_WORKER)
    start = time.monotonic()
    code = launch_local.launch(2, [], timeout=2, log_dir=tmp_path / "logs", script=script, grace=2)
    assert code == launch_local.TIMEOUT_EXIT_CODE == 124
    assert time.monotonic() - start < 15


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_children_ignoring_sigterm_are_killed(tmp_path):
    script = _script(tmp_path, "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(300)\n")
    start = time.monotonic()
    assert launch_local.launch(2, [], timeout=1, log_dir=tmp_path / "logs", script=script, grace=1) == 124
    assert time.monotonic() - start < 15


# Both processes write their shards of one global checkpoint to gs:// (the emulator) and
# read it back: the Orbax path a pod run takes.
ORBAX_WORKER = """
import os, sys
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

jax.distributed.initialize(
    coordinator_address=os.environ["TRM_COORDINATOR_ADDRESS"],
    num_processes=int(os.environ["TRM_NUM_PROCESSES"]),
    process_id=int(os.environ["TRM_PROCESS_ID"]),
    initialization_timeout=30,
)
mesh = Mesh(np.array(jax.devices()), ("data",))
full = np.arange(24, dtype=np.float32).reshape(8, 3)
rows = len(full) // jax.process_count()
local = full[jax.process_index() * rows:(jax.process_index() + 1) * rows]
state = {
    "batch": jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local, full.shape),
    "params": jax.device_put(np.ones(5, np.float32), NamedSharding(mesh, P())),
}
manager = ocp.CheckpointManager(sys.argv[1])
manager.save(1, args=ocp.args.StandardSave(state))
manager.wait_until_finished()
abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
restored = manager.restore(1, args=ocp.args.StandardRestore(abstract))
assert float(restored["batch"].sum()) == full.sum() and float(restored["params"].sum()) == 5.0
manager.close()
print(f"process {jax.process_index()} restored")
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_processes_checkpoint_collectively_to_gcs_emulator(tmp_path, gcs_emulator, capfd):
    import gcsfs

    script = _script(tmp_path, ORBAX_WORKER)
    root = f"{gcs_emulator['bucket']}/launch_local/ckpt"
    code = launch_local.launch(
        2, [f"gs://{root}"], devices_per_process=2, timeout=100, log_dir=tmp_path / "logs", script=script
    )
    assert code == 0, capfd.readouterr().err
    assert "process 0 restored" in capfd.readouterr().out
    assert "process 1 restored" in (tmp_path / "logs" / "process_1.log").read_text()
    written = gcsfs.GCSFileSystem().find(root)
    assert any("ocdbt.process_1" in path for path in written), written


@pytest.mark.parametrize("flag", ["--num-processes", "--devices-per-process"])
def test_zero_processes_or_devices_is_a_usage_error(flag, capsys):
    argv = ["--num-processes", "2", flag, "0", "--", "max_steps=1"]
    with pytest.raises(SystemExit) as exit_info:
        launch_local.parse_args(argv)
    assert exit_info.value.code == 2
    assert "must be >= 1 (got 0)" in capsys.readouterr().err
