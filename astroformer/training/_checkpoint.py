"""Checkpoint files: atomic writes, a checksummed header, and clear errors for damaged files.

Layout of a checkpoint file:

    ASTROFORMER-CHECKPOINT 2\\n
    {"payload_bytes": n, "sha256": "...", ...metadata...}\\n
    <n bytes: eqx.tree_serialise_leaves of the pytree>

The header is one line of JSON. Its `sha256` is the SHA-256 of the header without that key (canonical JSON,
sorted keys) followed by a newline and the payload, so the metadata (step, seed, what the run is) is covered
as well as the arrays: an edited, truncated or corrupted file raises `CheckpointError` naming the file
instead of loading garbage. Version-1 files (checksum of the payload only) still load; their header is not
verified.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from typing import Any

import equinox as eqx

_MAGIC = b"ASTROFORMER-CHECKPOINT 2\n"
_MAGIC_V1 = b"ASTROFORMER-CHECKPOINT 1\n"


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
    header = dict(metadata, payload_bytes=len(payload))
    header["sha256"] = _digest(header, payload)
    atomic_write(path, _MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + payload)


def _digest(header: dict[str, Any], payload: bytes) -> str:
    unsigned = {k: v for k, v in header.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(unsigned, sort_keys=True).encode() + b"\n" + payload).hexdigest()


def load_checkpoint(path: str | os.PathLike, template, *, check=None) -> tuple[Any, dict[str, Any]]:
    """Load a checkpoint written by `save_checkpoint`.

    **Arguments:** `path`; `template`: a pytree with the structure, shapes and dtypes of what was saved;
    `check`: optional `check(metadata)`, called on the verified header before the arrays are deserialised
    (to refuse a checkpoint of another run with a clear message).

    **Returns:** `(tree, metadata)`.

    **Raises:** `CheckpointError` naming the file if it is missing, is not a checkpoint, is truncated, fails its
    checksum, or does not fit `template`.
    """
    metadata, payload = _read(path, verify=True)
    if check is not None:
        check(metadata)
    try:
        tree = eqx.tree_deserialise_leaves(io.BytesIO(payload), template)
    except Exception as error:  # noqa: BLE001 - re-raised with the file's name
        raise CheckpointError(
            f"checkpoint {os.fspath(path)!r} does not fit the model built from its config "
            f"({type(error).__name__}: {error})"
        ) from error
    return tree, metadata


def _read(path, *, verify: bool):
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path!r} does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint {path!r} is a directory, expected a checkpoint file") from None
    except OSError as error:
        raise CheckpointError(f"checkpoint {path!r} cannot be read ({error.strerror})") from None
    version = 1 if raw.startswith(_MAGIC_V1) else 2
    if not raw.startswith(_MAGIC) and version == 2:
        raise CheckpointError(
            f"checkpoint {path!r} is not an astroformer checkpoint (bad header; file truncated or overwritten?)"
        )
    end = raw.find(b"\n", len(_MAGIC))
    try:
        if end < 0:
            raise ValueError("no end of header line")
        metadata = json.loads(raw[len(_MAGIC) : end])
        expected, checksum = int(metadata["payload_bytes"]), str(metadata["sha256"])
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"checkpoint {path!r} has a damaged header ({error}); the file is truncated or corrupted"
        ) from None
    payload = raw[end + 1 :]
    if verify:
        if len(payload) != expected:
            raise CheckpointError(
                f"checkpoint {path!r} is truncated or padded: its header promises "
                f"{expected} bytes of arrays, the file holds {len(payload)}"
            )
        actual = hashlib.sha256(payload).hexdigest() if version == 1 else _digest(metadata, payload)
        if actual != checksum:
            raise CheckpointError(
                f"checkpoint {path!r} is corrupted or was edited: SHA-256 of its "
                f"{'arrays' if version == 1 else 'header and arrays'} is {actual}, the header "
                f"recorded {checksum}"
            )
    return metadata, payload


def check_metadata(path: str | os.PathLike, metadata: dict[str, Any], expected: dict[str, Any], *, source: str) -> None:
    """Raise `CheckpointError` naming the first field where the checkpoint's header `metadata` differs from
    `expected` (what the run loading it says it is; `source` names where that comes from, e.g. its
    config.json). Fields absent from the header (older checkpoints) are not compared."""
    for name, value in expected.items():
        if name in metadata and metadata[name] != value:
            raise CheckpointError(
                f"checkpoint {os.fspath(path)!r} does not belong to this run: it was written with "
                f"{name}={metadata[name]!r}, {source} says {name}={value!r}"
            )
