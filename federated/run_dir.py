"""A run's output folder: checked before anything in it changes, written only atomically, cleared of
the temporary files of killed writers.

``federated.checkpoint.prepare_output_dir`` runs first (before the log file, the data or the model): a
resume's checkpoint must be readable and written with this run's config
(``federated.checkpoint.check_resume_config``), ``--eval-only`` needs a checkpoint in ``--model-dir``,
and the folder must be creatable and writable.
Only then are the temporary files of dead writers removed. Every results file is written with
``write_text`` / ``save_torch``: atomically (``dassl.utils.atomic``), and a failed write (read-only
folder, full disk) is an ``OutputError`` naming the path, with the earlier file intact.
"""
from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dassl.utils.atomic import atomic_write_text
from federated.errors import OutputError

logger = logging.getLogger("fedtv.run_dir")


@contextmanager
def writing(path: str) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``path`` into an ``OutputError`` naming it."""
    try:
        yield
    except OSError as err:
        reason = err.strerror or str(err)
        raise OutputError(f"cannot write {path}: {reason}; the files written before are intact "
                          f"(free space or fix the permissions, then continue with --resume)") from None


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically; ``OutputError`` when it cannot be written."""
    with writing(path):
        atomic_write_text(path, text)


def save_torch(obj: Any, path: str) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically; ``OutputError`` when it cannot be written."""
    from dassl.engine.trainer import atomic_torch_save

    with writing(path):
        atomic_torch_save(obj, path)


def check_writable(folder: str) -> None:
    """Create ``folder`` if needed and write (then remove) a small probe file in it.

    Raises:
        OutputError: the folder cannot be created (a file in the way, permissions) or written (read-only,
            full).
    """
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create the output folder {folder}: {err.strerror or err}") from None
    if not os.path.isdir(folder):
        raise OutputError(f"the output folder {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".write-probe.tmp-{os.getpid()}-")
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.remove(probe)
    except OSError as err:
        raise OutputError(f"the output folder {folder} is not writable: {err.strerror or err}") from None
