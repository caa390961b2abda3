"""Trial checkpoints on disk: written atomically, read back with ``weights_only=True``.

A crash (or kill) while a checkpoint is written must never leave a half-written file where the
previous checkpoint was: the state is written to a temporary file in the same directory, flushed
and fsync'ed, then moved over the old file with ``os.replace`` (atomic on POSIX) and the directory
entry fsync'ed. Until the replace, the previous checkpoint stays intact and loadable.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from symm.data.packed import write_atomic


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` to ``path`` atomically (temp file + fsync + os.replace); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: torch.save(state, f))
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors to CPU, no arbitrary code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)
