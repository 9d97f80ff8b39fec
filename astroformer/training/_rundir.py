"""Run directories that never lose a run: checks before any write, replacement only once the new run has a
checkpoint, no empty directories left by failed starts, and one message for every state a directory can be in.

A run directory is in one of four states:

- *absent or empty*: a new run may start there;
- *complete*: `config.json` and `checkpoint.eqx` (and usually `metrics.jsonl`): `--resume` continues it,
  `--overwrite` replaces it;
- *stopped before its first checkpoint* (killed, or its first step failed): `config.json` and maybe
  `metrics.jsonl`, no checkpoint: nothing to resume; `--overwrite` starts it again;
- *mid-replacement*: a run started with `--overwrite` moves the old run's files into `.previous-run/` when it
  starts writing and deletes them only once its own first checkpoint is on disk. If it dies before that, the
  next start in that directory puts the old run back (`recover_previous`).

`RunWriter` is the context manager that `train` writes through: on an error before the new run's first
checkpoint it removes what the new run wrote (and the directory, if it created it) and restores the old run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Literal

CHECKPOINT = "checkpoint.eqx"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
PREVIOUS = ".previous-run"
RUN_FILES = (CHECKPOINT, METRICS, CONFIG)


def check_text_file(path, name: str = "text") -> None:
    """Raise `ValueError` naming `name` unless `path` is an existing, readable regular file."""
    if not isinstance(path, str | os.PathLike):
        raise ValueError(f"{name}: expected the path of a UTF-8 text file, got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{name}: expected an existing UTF-8 text file, got {str(path)!r} (no such file)")
    if p.is_dir():
        raise ValueError(f"{name}: expected a UTF-8 text file, got {str(path)!r}, which is a directory")
    if not p.is_file():
        raise ValueError(f"{name}: expected a regular UTF-8 text file, got {str(path)!r} (not a regular file)")
    if not os.access(p, os.R_OK):
        raise ValueError(f"{name}: expected a readable UTF-8 text file, got {str(path)!r} (permission denied)")


def _existing(run_dir: Path) -> list[str]:
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def recover_previous(run_dir: Path) -> str | None:
    """If a replacement of the run in `run_dir` died before its first checkpoint, put the old run back.

    **Returns:** a sentence saying what was restored, or `None` if there was nothing to do.
    """
    previous = run_dir / PREVIOUS
    if not previous.is_dir():
        return None
    if (run_dir / CHECKPOINT).is_file():  # the replacement has a checkpoint: the old run is obsolete
        shutil.rmtree(previous, ignore_errors=True)
        return None
    for name in RUN_FILES:
        if (run_dir / name).exists():
            (run_dir / name).unlink()
    for name in RUN_FILES:
        if (previous / name).exists():
            os.replace(previous / name, run_dir / name)
    shutil.rmtree(previous, ignore_errors=True)
    return (
        f"{run_dir}: a replacement (--overwrite) stopped before its first checkpoint; the run it was "
        "replacing has been restored"
    )


def _check_run_config(path: Path, name: str, flag: str) -> None:
    """Raise `FileExistsError` unless `path` looks like a run's `config.json` (a JSON object with a `task` and an
    `attention`, as every version of `TrainConfig` writes; deliberately lenient, so that a run from another version
    can still be replaced): a directory holding some other `config.json` is not a run, and neither `--overwrite`
    nor a new run may replace the user's file."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        why = None if isinstance(data, dict) and {"task", "attention"} <= set(data) else "no 'task' and 'attention'"
    except (OSError, ValueError) as err:  # unreadable, not UTF-8, not JSON
        why = str(err)
    if why is not None:
        raise FileExistsError(
            f"{name}: {str(path.parent)!r} holds a {CONFIG} that is not an astroformer run's ({why}); it is left "
            f"alone (--overwrite replaces only runs): choose another {flag}"
        )


def check_run_dir(
    run_dir: str | os.PathLike, *, resume: bool, overwrite: bool, name: str = "run_dir", flag: str = "--run-dir"
) -> Path:
    """Check that a run may start (or resume) in `run_dir`, without writing anything (apart from restoring an
    interrupted replacement, see `recover_previous`). Errors name the directory as `name` (and its command-line
    flag as `flag`): another command's output directory (e.g. `distill`'s `out`, `--out`) is checked the same way.

    **Raises:** `ValueError` for `resume` and `overwrite` together, an empty `run_dir` or `run_dir` a file;
    `FileNotFoundError` when there is nothing to resume; `FileExistsError` when a run exists and neither flag is
    given, or whatever the flags when the directory holds a `config.json` that is not a run's (the user's file is
    never replaced). A run directory without a checkpoint gives the same explanation whichever was asked.
    """
    if resume and overwrite:
        raise ValueError("resume and overwrite: expected at most one of them, got both")
    if not str(run_dir).strip():  # Path("") is the current directory
        raise ValueError(f"{name}: expected a directory path, got an empty string")
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"{name}: expected a directory, got {str(run_dir)!r}, which is a file")
    if run_dir.is_dir():
        note = recover_previous(run_dir)
        if note is not None:
            import warnings

            warnings.warn(note, RuntimeWarning, stacklevel=3)
    existing = _existing(run_dir)
    checkpoint = run_dir / CHECKPOINT
    if checkpoint.exists() and not checkpoint.is_file():
        raise ValueError(f"{name}: expected {str(checkpoint)!r} to be a checkpoint file, got a directory")
    if CONFIG in existing and CHECKPOINT not in existing:
        _check_run_config(run_dir / CONFIG, name, flag)
    if existing and CHECKPOINT not in existing and not overwrite:
        raise FileExistsError(
            f"{name}: {str(run_dir)!r} holds a run that stopped before its first checkpoint "
            f"({', '.join(existing)}; no {CHECKPOINT}), so there is nothing to resume; start it again with "
            "--overwrite (--checkpoint-every sets how often checkpoints are written)"
        )
    if resume:
        if not existing:
            raise FileNotFoundError(
                f"{name}: cannot resume, {str(run_dir)!r} holds no run ({CHECKPOINT} does not exist)"
            )
        if not (run_dir / CONFIG).is_file():
            raise FileNotFoundError(f"{name}: cannot resume, {str(run_dir)!r} has a {CHECKPOINT} but no {CONFIG}")
        return run_dir
    if existing and not overwrite:
        raise FileExistsError(
            f"{name}: {str(run_dir)!r} already holds a run ({', '.join(existing)}); resume it (--resume), "
            f"replace it (--overwrite) or choose another {flag}"
        )
    return run_dir


class RunWriter:
    """Context manager around the writes of a new (or resumed) run in `run_dir`.

    On entry it creates `run_dir` if needed and, for a replacement, moves the old run's files into
    `.previous-run/`. `committed()` (called once the new run's first checkpoint is on disk) deletes them. An
    exception before that undoes everything: the new run's files are removed, the old run's restored, and a
    directory created by the writer is removed again if it is empty.
    """

    def __init__(self, run_dir: Path, *, resume: bool):
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.created: list[Path] = []  # directories made by the writer, deepest first
        self.replacing = False
        self.is_committed = resume  # a resumed run already has a checkpoint

    def __enter__(self) -> RunWriter:
        missing = self.run_dir
        while not missing.exists():
            self.created.append(missing)
            missing = missing.parent
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.resume:
            existing = _existing(self.run_dir)
            if existing:
                previous = self.run_dir / PREVIOUS
                previous.mkdir(exist_ok=True)
                for name in existing:
                    os.replace(self.run_dir / name, previous / name)
                self.replacing = True
        return self

    def committed(self) -> None:
        """The new run has a checkpoint: the replaced run (if any) is deleted."""
        if not self.is_committed:
            self.is_committed = True
            if self.replacing:
                shutil.rmtree(self.run_dir / PREVIOUS, ignore_errors=True)

    def rollback(self) -> None:
        """Undo the start of a run that has no checkpoint yet."""
        if self.is_committed:
            return
        if self.replacing:
            recover_previous(self.run_dir)
        else:
            for name in RUN_FILES:
                if (self.run_dir / name).exists():
                    (self.run_dir / name).unlink()
        for directory in self.created:
            try:
                directory.rmdir()  # only if empty
            except OSError:
                break

    def __exit__(self, kind, error, traceback) -> Literal[False]:  # never swallows the exception
        if kind is not None:
            self.rollback()
        return False
