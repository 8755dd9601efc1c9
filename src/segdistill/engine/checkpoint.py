"""Checkpoints: atomic writes (temp file, fsync, rename), an integrity digest, the previous checkpoint
kept as a fallback, and safe loading (``weights_only=True``: a file carrying pickled code is refused)."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..base.weights_io import load_checkpoint, load_model_weights, load_weights_file, sha256
from ..errors import UserError

__all__ = [
    "atomic_save",
    "load_checkpoint",
    "load_latest_checkpoint",
    "load_model_weights",
    "load_training_checkpoint",
    "load_weights_file",
    "prepare_run_dir",
    "save_training_checkpoint",
    "sha256",
    "state_digest",
]


def prepare_run_dir(path: str | Path) -> Path:
    """Create the run directory and check that files can be written in it (one-line error if not)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(
            f"output directory {path} is not writable ({exc.strerror or exc}); set out_dir= or name="
        ) from exc
    return path


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not possible on every platform / file system
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    ``path`` is never left half-written: a failure (disk full, kill) leaves the previous file as it
    was. A write error is a :class:`UserError` naming the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        full = " (disk full)" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        kept = "; the previous file is kept" if path.exists() else ""
        raise UserError(f"could not write {path}{full}: {exc.strerror or exc}{kept}") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def state_digest(obj: Any) -> str:
    """SHA-256 over a checkpoint's content: every tensor's dtype, shape and bytes, and every other
    value's ``repr``, in a fixed key order. ``torch.load`` does not notice flipped bytes inside a
    tensor; this does."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().data)
        elif isinstance(value, dict):
            digest.update(f"D{len(value)}".encode())
            for key in sorted(value, key=repr):
                digest.update(repr(key).encode())
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            digest.update(f"L{len(value)}".encode())
            for item in value:
                feed(item)
        else:
            digest.update(repr(value).encode())

    feed(obj)
    return digest.hexdigest()


def previous_path(path: Path) -> Path:
    """``last.pt`` -> ``last.previous.pt``: the checkpoint before, the fallback when ``last`` is damaged."""
    return path.with_name(f"{path.stem}.previous{path.suffix}")


def save_training_checkpoint(state: dict, path: str | Path, keep_previous: bool = True) -> None:
    """Save ``state`` with its digest atomically; the file it replaces becomes ``<stem>.previous.pt``
    (hard link, so that ``path`` exists at every instant)."""
    path = Path(path)
    if keep_previous and path.is_file():
        previous = previous_path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{previous.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.unlink(tmp)
        try:
            try:
                os.link(path, tmp)
            except OSError:  # no hard links on this file system
                shutil.copyfile(path, tmp)
            os.replace(tmp, previous)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise UserError(f"could not keep the previous checkpoint {previous}: {exc.strerror or exc}") from exc
    atomic_save({**state, "digest": state_digest(state)}, path)


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """:func:`load_checkpoint` and a check of the digest written by :func:`save_training_checkpoint`."""
    state = load_checkpoint(path)
    digest = state.pop("digest", None)
    if digest is not None and digest != state_digest(state):
        raise UserError(f"checkpoint {path} is corrupt: its content does not match its digest")
    return state


def load_latest_checkpoint(
    directory: str | Path, name: str = "last.pt", warn: Callable[[str], None] | None = None
) -> tuple[dict[str, Any], Path] | None:
    """The newest intact training checkpoint in ``directory``: ``name``, else its ``.previous`` copy
    (with a warning naming the damaged file); ``None`` when there is none. Raises when both exist
    but neither is intact."""
    directory = Path(directory)
    candidates = [p for p in (directory / name, previous_path(directory / name)) if p.is_file()]
    errors = []
    for path in candidates:
        try:
            state = load_training_checkpoint(path)
        except UserError as exc:
            errors.append(str(exc))
            if warn is not None:
                warn(f"{exc}; trying the checkpoint before it")
            continue
        if errors and warn is not None:
            warn(f"resuming from the previous checkpoint {path}")
        return state, path
    if errors:
        raise UserError(f"no intact checkpoint in {directory}: {errors[-1]}")
    return None
