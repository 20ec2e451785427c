"""Blob files: large step outputs kept as files under a Store's blob folder, whatever its database.

A blob is written to a temporary name, flushed, fsynced and renamed into place, then its folder is
fsynced, so a recorded step never points at a blob that a power loss took back.
"""

from __future__ import annotations

import os
from pathlib import Path

from runtime.core.errors import StoreError


def blob_path(blob_dir: Path, key: str) -> Path:
    """Where blob ``key`` (relative names such as ``task/step``) lives; StoreError for a key that
    would leave ``blob_dir`` or name it."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"bad blob key {key!r}: want relative names like 'task/step'")
    return blob_dir.joinpath(*parts)


def write_blob(blob_dir: Path, key: str, data: bytes) -> None:
    path = blob_path(blob_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)  # the rename itself survives power loss only once its directory is


def read_blob(blob_dir: Path, key: str) -> bytes:
    try:
        return blob_path(blob_dir, key).read_bytes()
    except FileNotFoundError:
        raise StoreError(f"blob {key!r} is missing from {blob_dir}") from None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
