"""Checksum manifests, which also mark a dataset directory as complete, and atomic builds.

manifest.json is written last, so its presence means every other file of the dataset is there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from dataset.errors import DatasetError

MANIFEST = "manifest.json"


def write_manifest(out_dir: str, builder: str, args: Mapping[str, Any]) -> None:
    """Record sha256 of every file plus the builder arguments, so a dataset can be verified and rebuilt."""
    files = {}
    for root, _, names in os.walk(out_dir):
        for name in sorted(names):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, out_dir)
            if rel != MANIFEST:
                files[rel] = _sha256_file(path)
    manifest = {"builder": builder, "args": dict(args), "files": dict(sorted(files.items()))}
    with open(os.path.join(out_dir, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)


def verify_manifest(out_dir: str) -> None:
    with open(os.path.join(out_dir, MANIFEST)) as f:
        manifest = json.load(f)
    for rel, digest in manifest["files"].items():
        if _sha256_file(os.path.join(out_dir, rel)) != digest:
            raise DatasetError(f"{os.path.join(out_dir, rel)}: sha256 differs from {MANIFEST}; rebuild the dataset")


def is_complete(path: str) -> bool:
    return os.path.exists(os.path.join(path, MANIFEST))


def build_atomically(path: str, build: Callable[[str], object]) -> None:
    """Run `build(staging_dir)` and rename the result to `path`, unless a complete dataset is
    already there. Several processes sharing a filesystem may race: the first rename wins and
    the others discard their own staging copy. An existing incomplete directory is left alone."""
    if is_complete(path):
        return
    _refuse_incomplete(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=".staging-")
    try:
        build(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # only our own temporary copy
        raise
    try:
        os.rename(staging, path)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not is_complete(path):  # not another process winning the race
            _refuse_incomplete(path)
            raise


def _refuse_incomplete(path: str) -> None:
    if os.path.exists(path):
        raise DatasetError(f"{path} exists but holds no complete dataset (no {MANIFEST}); move it aside and rerun")


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
