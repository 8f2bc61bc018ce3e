"""Shared fixtures. Tests never talk to anything but 127.0.0.1.

The environment is set here, at import time, because storage and auth libraries read some of
these variables once when they are first imported or first authenticate; subprocesses that
tests start (e.g. through scripts/launch_local.py) inherit it.
"""

from __future__ import annotations

import os
import socket

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


GCS_EMULATOR_PORT = _free_port()
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
    WANDB_SILENT="true",
)


# Repeated runs of the same program (a run, then its resume) skip XLA compilation.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".pytest_cache", "jax"))


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
