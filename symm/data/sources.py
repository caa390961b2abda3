"""Reading a raw dataset from wherever the user keeps it: a folder, a ``.zip`` or a ``.tar(.gz)``.

The user points ``--root`` (or ``data.<name>.root`` / an environment variable) at the folder they
extracted, at a parent folder of it, or at the unextracted archive. A :class:`Source` hides the
difference: it finds the dataset's top folder by a *marker* file (``images.txt`` for CUB,
``Ebay_train.txt`` for SOP, ...) and reads files relative to it.

- folder: files are read in place;
- zip: members are read by name (random access; nothing is extracted);
- tar / tar.gz / tgz: gzip has no random access, so the archive is extracted once into a
  temporary folder beside the output (removed afterwards; with ``filter="data"``, so member
  names cannot escape it), then read as a folder.

A source must be picklable so that prepare's worker processes can read from it; the zip handle
is opened lazily in each process.
"""
from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


class DatasetNotFound(FileNotFoundError):
    """The root, an index file or the expected layout is missing; the message says what to do."""


class Source:
    """Files of one dataset, addressed by paths relative to the dataset's top folder."""

    description = "source"

    def exists(self, rel: str) -> bool:
        raise NotImplementedError

    def read_bytes(self, rel: str) -> bytes:
        raise NotImplementedError

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8", errors="replace")


class DirSource(Source):
    def __init__(self, top: Path) -> None:
        self.top = Path(top)
        self.description = f"folder {self.top}"

    def exists(self, rel: str) -> bool:
        return (self.top / rel).is_file()

    def read_bytes(self, rel: str) -> bytes:
        return (self.top / rel).read_bytes()


class ZipSource(Source):
    def __init__(self, archive: Path, prefix: str) -> None:
        self.archive = Path(archive)
        self.prefix = prefix  # "" or "Top/"
        self.description = f"zip archive {self.archive}" + (f" (folder {prefix.rstrip('/')})" if prefix else "")
        self._zf: zipfile.ZipFile | None = None
        self._names: set[str] | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_zf"] = None  # each process opens its own handle
        state["_names"] = None
        return state

    def _zip(self) -> zipfile.ZipFile:
        if self._zf is None:
            self._zf = zipfile.ZipFile(self.archive)
            self._names = set(self._zf.namelist())
        return self._zf

    def exists(self, rel: str) -> bool:
        self._zip()
        assert self._names is not None
        return self.prefix + rel in self._names

    def read_bytes(self, rel: str) -> bytes:
        try:
            return self._zip().read(self.prefix + rel)
        except KeyError:
            raise FileNotFoundError(f"{rel} not in {self.archive}") from None


def is_archive(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and (name.endswith(".zip") or name.endswith(TAR_SUFFIXES))


def _find_top_in_names(names: Sequence[str], marker: str) -> str | None:
    """The shortest folder prefix p such that p + marker is a member ('' for the top).

    A marker ending in "/" names a folder: any member below p + marker counts.
    """
    best: str | None = None
    for name in names:
        start = 0
        while True:
            idx = name.find(marker, start)
            if idx < 0:
                break
            start = idx + 1
            if idx > 0 and name[idx - 1] != "/":
                continue
            if not marker.endswith("/") and name[idx:] != marker:
                continue
            prefix = name[:idx]
            if best is None or len(prefix) < len(best):
                best = prefix
    return best


def find_top_folder(root: Path, marker: str, depth: int = 2) -> Path | None:
    """``root`` itself or a sub-folder (breadth first, up to ``depth`` levels) holding ``marker``."""
    level = [root]
    for _ in range(depth + 1):
        for folder in level:
            if (folder / marker.rstrip("/")).exists():
                return folder
        nxt: list[Path] = []
        for folder in level:
            try:
                nxt.extend(sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")))
            except OSError:
                pass
        level = nxt
    return None


def find_archive(folder: Path, archive_names: Sequence[str], depth: int = 1) -> Path | None:
    """The first of ``archive_names`` found in ``folder`` or its sub-folders (up to ``depth``)."""
    level = [folder]
    for _ in range(depth + 1):
        for f in level:
            for name in archive_names:
                if (f / name).is_file():
                    return f / name
        level = [p for f in level for p in sorted(f.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    return None


@contextmanager
def open_source(
    root: Path,
    marker: str,
    *,
    scratch_parent: Path,
    what: str,
    archive_names: Sequence[str] = (),
) -> Iterator[Source]:
    """Open ``root`` (folder or archive) as a :class:`Source` whose top holds ``marker``.

    A folder without the marker but holding one of ``archive_names`` (e.g. ``CUB_200_2011.tgz``)
    opens that archive. ``what`` is appended to every error: the expected layout and where to get
    the dataset. Tar archives are extracted under ``scratch_parent`` and removed on exit.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetNotFound(f"dataset root {root} does not exist.\n{what}")
    if root.is_dir():
        top = find_top_folder(root, marker)
        if top is None:
            archive = find_archive(root, archive_names)
            if archive is None:
                raise DatasetNotFound(f"{marker} not found in {root} (nor in its sub-folders).\n{what}")
            with open_source(archive, marker, scratch_parent=scratch_parent, what=what) as src:
                yield src
            return
        yield DirSource(top)
        return
    name = root.name.lower()
    if name.endswith(".zip"):
        try:
            with zipfile.ZipFile(root) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile as err:
            raise DatasetNotFound(f"{root} is not a readable zip archive ({err}).\n{what}") from None
        prefix = _find_top_in_names(names, marker)
        if prefix is None:
            raise DatasetNotFound(f"{marker} not found inside {root}.\n{what}")
        yield ZipSource(root, prefix)
        return
    if name.endswith(TAR_SUFFIXES):
        scratch_parent.mkdir(parents=True, exist_ok=True)
        scratch = scratch_parent / f".extract-{root.name}-{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        try:
            try:
                with tarfile.open(root) as tf:
                    tf.extractall(scratch, filter="data")
            except (tarfile.TarError, OSError, EOFError) as err:
                raise DatasetNotFound(f"{root} could not be extracted ({err}).\n{what}") from None
            top = find_top_folder(scratch, marker, depth=3)
            if top is None:
                raise DatasetNotFound(f"{marker} not found inside {root}.\n{what}")
            src = DirSource(top)
            src.description = f"tar archive {root} (extracted to a temporary folder)"
            yield src
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    raise DatasetNotFound(f"{root} is a file but not a .zip / .tar / .tar.gz / .tgz archive.\n{what}")
