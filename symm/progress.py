"""Progress bars that suit a terminal and a log file alike (tqdm).

On a terminal the bar redraws twice a second; in a log (stderr not a TTY: CI, `dvc repro > log`,
Ray workers) it writes at most one plain-ASCII update every 30 s, so long work shows it is alive
without flooding the log. `enabled=None` means "only on a terminal".
"""
from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any


def is_terminal(stream: IO[str] | None = None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def progress_bar(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", enabled: bool | None = True, file: IO[str] | None = None,
                 leave: bool = True) -> Any:
    """A tqdm bar (a no-op one when disabled); see the module docstring for the two modes."""
    from tqdm.auto import tqdm

    stream = file or sys.stderr
    tty = is_terminal(stream)
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream,
                disable=not (tty if enabled is None else enabled),
                mininterval=0.5 if tty else 30.0, ascii=None if tty else True, dynamic_ncols=tty, leave=leave)
