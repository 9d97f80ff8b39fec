"""Checkpoint files: atomic writes, a checksummed header, and clear errors for damaged files.

Layout of a checkpoint file:

    ASTROFORMER-CHECKPOINT 1\\n
    {"payload_bytes": n, "sha256": "...", ...metadata...}\\n
    <n bytes: eqx.tree_serialise_leaves of the pytree>

The header is one line of JSON; the payload's length and SHA-256 are verified before it is deserialised, so a
truncated or corrupted file raises `CheckpointError` naming the file instead of loading garbage.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from typing import Any

import equinox as eqx

_MAGIC = b"ASTROFORMER-CHECKPOINT 1\n"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted or does not match the expected model."""


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically: a temporary file in the same directory, flushed and fsynced, then
    `os.replace`d over `path`. A crash leaves either the old file or the new one, never half of one."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix="-" + os.path.basename(path))
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(path: str | os.PathLike, tree, metadata: dict[str, Any]) -> None:
    """Serialise the array leaves of `tree` (`eqx.tree_serialise_leaves`) with a JSON `metadata` header and a
    SHA-256 checksum, atomically."""
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, tree)
    payload = buffer.getvalue()
    header = dict(metadata, payload_bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    atomic_write(path, _MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + payload)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The header of a checkpoint file, without checking or reading its payload."""
    return _read(path, verify=False)[0]


def load_checkpoint(path: str | os.PathLike, template) -> tuple[Any, dict[str, Any]]:
    """Load a checkpoint written by `save_checkpoint`.

    **Arguments:** `path`; `template`: a pytree with the structure, shapes and dtypes of what was saved.

    **Returns:** `(tree, metadata)`.

    **Raises:** `CheckpointError` naming the file if it is missing, is not a checkpoint, is truncated, fails its
    checksum, or does not fit `template`.
    """
    metadata, payload = _read(path, verify=True)
    try:
        tree = eqx.tree_deserialise_leaves(io.BytesIO(payload), template)
    except Exception as error:  # noqa: BLE001 - re-raised with the file's name
        raise CheckpointError(
            f"checkpoint {os.fspath(path)!r} does not fit the model built from its config "
            f"({type(error).__name__}: {error})") from error
    return tree, metadata


def _read(path, *, verify: bool):
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path!r} does not exist") from None
    if not raw.startswith(_MAGIC):
        raise CheckpointError(f"checkpoint {path!r} is not an astroformer checkpoint (bad header; file "
                              f"truncated or overwritten?)")
    end = raw.find(b"\n", len(_MAGIC))
    try:
        if end < 0:
            raise ValueError("no end of header line")
        metadata = json.loads(raw[len(_MAGIC):end])
        expected, checksum = int(metadata["payload_bytes"]), str(metadata["sha256"])
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"checkpoint {path!r} has a damaged header ({error}); the file is truncated "
                              "or corrupted") from None
    payload = raw[end + 1:]
    if verify:
        if len(payload) != expected:
            raise CheckpointError(f"checkpoint {path!r} is truncated or padded: its header promises "
                                  f"{expected} bytes of arrays, the file holds {len(payload)}")
        actual = hashlib.sha256(payload).hexdigest()
        if actual != checksum:
            raise CheckpointError(f"checkpoint {path!r} is corrupted: SHA-256 of its arrays is {actual}, "
                                  f"the header recorded {checksum}")
    return metadata, payload
