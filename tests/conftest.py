"""Shared fixtures. Tests never talk to anything but 127.0.0.1.

The environment is set here, at import time, because storage and auth libraries read some of
these variables once when they are first imported or first authenticate; subprocesses that
tests start (e.g. through scripts/launch_local.py) inherit it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.pretrain_runs import (
    TIMEOUT_SCALE,
    assert_ok,
    eval_row,
    launcher_cmd,
    losses,
    pretrain_cmd,
    restore,
    run,
    run_env,
    train_args,
)
from training.ports import free_port

GCS_EMULATOR_PORT = free_port()
GCS_EMULATOR_URL = f"http://127.0.0.1:{GCS_EMULATOR_PORT}"
GCS_TEST_BUCKET = "trm-test"

os.environ.update(
    # gcsfs and google-cloud-storage send gs:// requests here.
    STORAGE_EMULATOR_HOST=GCS_EMULATOR_URL,
    # tensorstore (hence Orbax) sends gs:// requests here.
    TENSORSTORE_GCS_HTTP_URL=GCS_EMULATOR_URL,
    # The emulator has no hierarchical-namespace API; don't let gcsfs probe for it.
    GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
    # Credentials: without these, gcsfs and google-auth probe the GCE metadata server and
    # tensorstore looks for application-default credentials and then the metadata server.
    FSSPEC_GS_TOKEN="anon",
    NO_GCE_CHECK="true",
    GOOGLE_AUTH_TOKEN_FOR_TESTING="dummy",
    WANDB_MODE="offline",
    # Implicit rank promotion (a [B] array silently broadcast against [B, L]) is an error in tests.
    JAX_NUMPY_RANK_PROMOTION="raise",
    WANDB_SILENT="true",
)


# Repeated runs of the same program (a run, then its resume) skip XLA compilation.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".pytest_cache", "jax")
)


@pytest.fixture(scope="session")
def gcs_emulator():
    """An in-memory GCS emulator with an empty bucket; gs://<bucket>/... reaches it."""
    from gcp_storage_emulator.handlers import objects
    from gcp_storage_emulator.server import create_server

    # Real GCS media downloads carry x-goog-generation; the emulator's do not, and then
    # tensorstore's conditional writes (every Orbax OCDBT manifest update is a read-modify-write)
    # fail at random with "Malformed StorageGeneration". Add the headers, as GCS does.
    download = objects.download

    def download_with_generation(request, response, storage, *args, **kwargs):
        download(request, response, storage, *args, **kwargs)
        if response.status < 300:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = obj["generation"]
            response["x-goog-metageneration"] = obj["metageneration"]

    objects.download = download_with_generation
    server = create_server("127.0.0.1", GCS_EMULATOR_PORT, in_memory=True, default_bucket=GCS_TEST_BUCKET)
    server.start()
    try:
        yield {"url": GCS_EMULATOR_URL, "bucket": GCS_TEST_BUCKET}
    finally:
        server.stop()
        objects.download = download


def pytest_collection_modifyitems(items):
    """Scale every test's pytest-timeout like the waits in pretrain_runs (TRM_TEST_TIMEOUT_SCALE)."""
    for item in items:
        marker = item.get_closest_marker("timeout")
        if marker and marker.args:
            item.add_marker(pytest.mark.timeout(marker.args[0] * TIMEOUT_SCALE), append=False)


# End-to-end runs shared by the resume, fault and multi-host tests (helpers in pretrain_runs.py).


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> str:
    """The quickstart dataset (train and test splits), generated once per session."""
    from dataset.quickstart import build_quickstart_dataset

    path = str(tmp_path_factory.mktemp("data") / "qs")
    build_quickstart_dataset(path)
    return path


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("jax-compilation-cache"))


@pytest.fixture(scope="session")
def reference(tmp_path_factory, data, compile_cache) -> dict:
    """One uninterrupted single-process, single-device run of TINY, checkpointing every 2 steps:
    the run every other run of the same global batch is compared with."""
    run_dir = tmp_path_factory.mktemp("reference")
    proc = run(
        pretrain_cmd(train_args(data, run_dir, "checkpoint_every_steps=2")),
        run_env(compile_cache),
        run_dir / "log.txt",
        timeout=120,
    )
    assert_ok(proc)
    state, carry, step = restore(str(run_dir / "checkpoints"))
    return {
        "run_dir": run_dir,
        "ckpt_dir": str(run_dir / "checkpoints"),
        "state": state,
        "carry": carry,
        "step": step,
        "losses": losses(run_dir),
        "eval": eval_row(run_dir),
    }


@pytest.fixture(scope="session")
def launched(tmp_path_factory, data, compile_cache):
    """launched(num_processes, devices_per_process) -> run_dir of an uninterrupted TINY run over
    launch_local, run once per layout and session."""
    runs: dict[tuple[int, int], Path] = {}

    def get(num_processes: int, devices_per_process: int) -> Path:
        key = (num_processes, devices_per_process)
        if key not in runs:
            root = tmp_path_factory.mktemp(f"launched_{num_processes}x{devices_per_process}")
            cmd = launcher_cmd(
                num_processes, devices_per_process, train_args(data, root / "run"), root / "logs", timeout=200
            )
            assert_ok(run(cmd, run_env(compile_cache), root / "launcher.txt", timeout=220))
            runs[key] = root / "run"
        return runs[key]

    return get
