"""The gcs_emulator fixture: gs:// works through gcsfs, tensorstore and Orbax, locally only."""

from __future__ import annotations

import ipaddress
import socket

import numpy as np
import pytest


@pytest.fixture
def loopback_only(monkeypatch):
    """Fail any Python-level connection that leaves this machine."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def check(address):
        if isinstance(address, tuple) and not ipaddress.ip_address(address[0]).is_loopback:
            raise AssertionError(f"test tried to reach {address}")

    def connect(self, address):
        check(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        check(address)
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)


def test_gcsfs_round_trip(gcs_emulator, loopback_only):
    import gcsfs

    fs = gcsfs.GCSFileSystem()
    path = f"{gcs_emulator['bucket']}/gcsfs/hello.txt"
    fs.pipe(path, b"hello")
    assert fs.cat(path) == b"hello"
    assert fs.ls(f"{gcs_emulator['bucket']}/gcsfs") == [path]


def test_tensorstore_zarr_round_trip(gcs_emulator):
    import tensorstore as ts

    spec = {"driver": "zarr", "kvstore": f"gs://{gcs_emulator['bucket']}/tensorstore/array"}
    data = np.arange(12, dtype=np.int32).reshape(3, 4)
    array = ts.open(spec, create=True, dtype=ts.int32, shape=data.shape).result()
    array.write(data).result()
    np.testing.assert_array_equal(ts.open(spec).result().read().result(), data)


def test_orbax_checkpoint_manager_round_trip(gcs_emulator):
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    root = f"gs://{gcs_emulator['bucket']}/orbax/run"
    state = {"w": jnp.arange(6.0), "b": jnp.ones((2, 3))}
    manager = ocp.CheckpointManager(root, options=ocp.CheckpointManagerOptions(max_to_keep=2))
    for step in (1, 2, 3):
        manager.save(step, args=ocp.args.StandardSave({k: v * step for k, v in state.items()}))
    manager.wait_until_finished()
    assert manager.all_steps() == [2, 3]

    restored = ocp.CheckpointManager(root).restore(3, args=ocp.args.StandardRestore(state))
    np.testing.assert_array_equal(restored["w"], np.arange(6.0) * 3)
    np.testing.assert_array_equal(restored["b"], np.full((2, 3), 3.0))
