"""Atomic file writes that never follow a planted link, and removal of the temporary files a killed
writer left behind.

A file is written to a fresh temporary file in the target's own folder (``tempfile.mkstemp``: created
with ``O_CREAT | O_EXCL``, so a symlink or file planted at a guessable name is never followed or
overwritten; it gets the mode a plain ``open`` would give, 0666 less the umask), flushed and
``fsync``'d, then renamed over the target (``os.replace``, atomic
on POSIX). A crash at any moment leaves the previous file intact. Temporary names are
``.<target name>.tmp-<pid>-<random>``; the pid lets :func:`remove_stale_temps` tell a dead writer's
leftover from a live writer's file.
"""
from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from typing import IO

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "remove_stale_temps"]

# ``.results.json.tmp-123-abcd``; the pre-mkstemp spellings ``checkpoint.pt.tmp.123``, ``x.npy.tmp.123.npy``
_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[^/]*$")
_LEGACY_TEMP = re.compile(r"^(?P<name>[^.].*)\.tmp\.(?P<pid>\d+)(\.npy)?$")


def _file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: 0666 less this process's umask (read from
    ``/proc/self/status``; 0644 where that is not available)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o644


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(f)`` on a new temporary binary file next to ``path``, then rename it to ``path``.

    Raises:
        OSError: the folder cannot be created or written (read-only, full ...); ``path`` is unchanged
            and the temporary file is removed.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.tmp-{os.getpid()}-")
    try:
        os.fchmod(fd, _file_mode())  # mkstemp's 0600 while writing; the usual mode once in place
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (a process of another user counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str) -> list[str]:
    """Remove the temporary files of :func:`atomic_write` (and of the earlier ``<name>.tmp.<pid>`` scheme)
    in ``folder`` whose writer process no longer exists; returns the removed paths.

    A live process's temporary file is kept (its write may be in progress). Only regular files are
    removed, never a link or a folder. On a folder shared between machines a pid names a process of
    this machine only: do not run two machines' writers in one folder.
    """
    removed: list[str] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _TEMP.match(name) or _LEGACY_TEMP.match(name)
        if match is None or _alive(int(match["pid"])):
            continue
        path = os.path.join(folder, name)
        if os.path.islink(path) or not os.path.isfile(path):
            continue
        try:
            os.remove(path)
        except OSError:
            continue
        removed.append(path)
    return removed
