"""Prepared data is swapped in only when complete: every site is built aside, then renamed into place.

A data preparation writes each site's folder and datalist through one :class:`StagedOutput`. Nothing the
previous run prepared is touched until the whole new output is built; then each site's folder and, after it,
its datalist are swapped in, and shared files (a pooled datalist, a summary) last. A preparation that fails
half-way, on a corrupt case or a full disk, leaves the previous dataset and datalists exactly as they were.

Names beside a target (``<name>`` in ``<folder>``), all hidden:

* ``.tmp.<32 hex>.<name>``: what is being built (also :func:`medfl.common.io.atomic_path`'s temporary files);
* ``.old.<32 hex>.<name>``: the previous version, kept until every target of the run is in place.

A killed run leaves such names behind; :func:`remove_leftovers` deletes them when the next run stages its first
target in that folder, and renames a previous folder back if the kill came between moving it away and moving
its replacement in. One preparation at a time may write into a folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any, List, Optional, Set, Tuple, Type

from medfl.common.io import TEMPORARY_PREFIX, PathLike, fsync_path, temporary_name

__all__ = ["StagedOutput", "remove_leftovers"]

PREVIOUS_PREFIX = ".old."
LEFTOVER = re.compile(
    rf"^(?P<kind>{re.escape(TEMPORARY_PREFIX)}|{re.escape(PREVIOUS_PREFIX)})[0-9a-f]{{32}}\.(?P<name>.+)$"
)


def _is_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _delete(path: Path) -> None:
    if _is_folder(path):
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def remove_leftovers(folder: PathLike) -> List[str]:
    """Delete the temporary and previous versions a killed run left in ``folder``; return their names.

    A previous version whose target is missing (the run was killed between moving it away and moving the new
    one in) is renamed back instead.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for entry in sorted(folder.iterdir()):
        match = LEFTOVER.match(entry.name)
        if not match:
            continue
        target = folder / match["name"]
        if match["kind"] == PREVIOUS_PREFIX and not _exists(target):
            os.rename(entry, target)
        else:
            _delete(entry)
        found.append(entry.name)
    return found


def _move_aside(target: Path, previous: Path) -> None:
    """Keep ``target`` as ``previous``: a folder is renamed; a file is hard-linked, so that the new file then
    replaces it atomically (renamed where the file system has no hard links)."""
    if not _is_folder(target):
        try:
            os.link(target, previous, follow_symlinks=False)
            return
        except OSError:
            pass
    os.rename(target, previous)


def _undo_swap(temporary: Path, target: Path, previous: Optional[Path]) -> None:
    """Put ``target`` back as it was before :func:`_move_aside` and the rename of ``temporary`` over it."""
    moved_in = not _exists(temporary)
    if previous is None:
        if moved_in:
            _delete(target)
    elif not moved_in and _exists(target):  # the target is still the previous file, ``previous`` a link to it
        previous.unlink()
    else:
        if moved_in and _is_folder(previous):  # a folder cannot be renamed over another
            _delete(target)
        os.replace(previous, target)


def _fsync_tree(path: Path) -> None:
    """Flush a file, or every file and folder under a folder, to disk (writers such as nibabel or PIL do not)."""
    if path.is_dir():
        for parent, _, files in os.walk(path):
            for name in files:
                fsync_path(os.path.join(parent, name))
            fsync_path(parent)
    else:
        fsync_path(path)


class StagedOutput:
    """All outputs of one preparation, built beside their targets and swapped in together (issue 19.5).

    Use it as a context manager. :meth:`folder` and :meth:`file` hand out a temporary path for a target (a
    site's folder, a datalist); the caller writes there. When the block ends without an exception, every target
    is swapped in, in the order it was staged: its temporary version is flushed to disk, the previous version
    is moved aside (a folder renamed, a file hard-linked, so a file is replaced atomically), the new one renamed
    in; once all are in place the previous versions are deleted. If a swap fails, those already made are undone.
    When the block ends with an exception, the temporary versions are deleted and folders the staging created
    are removed again if empty, so the previous output stays as it was.
    """

    def __init__(self) -> None:
        self._staged: List[Tuple[Path, Path]] = []  # (temporary, target), in commit order
        self._cleaned: Set[Path] = set()
        self._created: List[Path] = []

    def _stage(self, target: PathLike) -> Tuple[Path, Path]:
        target = Path(target)
        if any(staged == target for _, staged in self._staged):
            raise ValueError(f"{target} is staged twice")
        missing = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
        target.parent.mkdir(parents=True, exist_ok=True)
        self._created.extend(missing)  # deepest first
        if target.parent not in self._cleaned:
            remove_leftovers(target.parent)
            self._cleaned.add(target.parent)
        temporary = temporary_name(target)
        self._staged.append((temporary, target))
        return temporary, target

    def folder(self, target: PathLike) -> Path:
        """A new empty folder in which to build ``target``."""
        temporary, _ = self._stage(target)
        temporary.mkdir()
        return temporary

    def file(self, target: PathLike) -> Path:
        """A path (not created) at which to write ``target``; it keeps the target's extensions."""
        return self._stage(target)[0]

    def write_json(self, obj: Any, target: PathLike) -> None:
        """Stage ``target`` holding ``obj`` as indented JSON."""
        self.file(target).write_text(json.dumps(obj, indent=2) + "\n")

    def commit(self) -> None:
        """Swap every staged target in (see the class); the staging is empty afterwards."""
        for temporary, _ in self._staged:
            _fsync_tree(temporary)
        swapped: List[Tuple[Path, Path, Optional[Path]]] = []
        try:
            for temporary, target in self._staged:
                previous = temporary_name(target, PREVIOUS_PREFIX) if _exists(target) else None
                if previous is not None:
                    _move_aside(target, previous)
                swapped.append((temporary, target, previous))
                os.replace(temporary, target)
                fsync_path(target.parent)
        except BaseException:
            for temporary, target, previous in reversed(swapped):
                _undo_swap(temporary, target, previous)
            self.discard()
            raise
        for _, _, previous in swapped:
            if previous is not None:
                _delete(previous)
        self._staged, self._created = [], []

    def discard(self) -> None:
        """Delete every staged temporary version and the folders the staging created, if left empty."""
        for temporary, _ in self._staged:
            if _exists(temporary):
                _delete(temporary)
        for folder in sorted(set(self._created), key=lambda p: len(p.parts), reverse=True):
            try:
                folder.rmdir()
            except OSError:  # not empty (another target lives there) or already gone
                pass
        self._staged, self._created = [], []

    def __enter__(self) -> "StagedOutput":
        return self

    def __exit__(self, kind: Optional[Type[BaseException]], error: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()
