"""Dassl-style logging: everything printed to stdout is also appended to a log file; Python logging
(the ``fedtv`` loggers) routed to the console and that file (``configure_logging``)."""
from __future__ import annotations

import logging
import os.path as osp
import sys
import time
from typing import IO

from .tools import mkdir_if_missing

__all__ = ["Logger", "configure_logging", "reset_logger", "setup_logger"]

_LOG_SUFFIXES = (".txt", ".log")


class Logger:
    """A stdout replacement that writes to the console and to ``fpath`` (opened for appending)."""

    def __init__(self, console: IO[str], fpath: str, requested: str):
        self.console = console
        self.fpath = fpath
        self.requested = requested  # the path setup_logger was asked for (before any suffix)
        self.file = open(fpath, "a", encoding="utf-8")

    def write(self, msg: str) -> int:
        self.console.write(msg)
        if not self.file.closed:
            try:
                self.file.write(msg)
                self.file.flush()
            except OSError as err:
                self._give_up(err)
        return len(msg)

    def flush(self) -> None:
        self.console.flush()
        if not self.file.closed:
            try:
                self.file.flush()
            except OSError as err:
                self._give_up(err)

    def _give_up(self, err: OSError) -> None:
        """The log file cannot be written (disk full ...): say so once, keep printing to the console."""
        try:
            self.file.close()
        except OSError:
            pass
        self.console.write(f"\nwarning: the log file {self.fpath} cannot be written ({err.strerror or err}); "
                           f"logging to the console only\n")

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()

    def isatty(self) -> bool:
        return bool(getattr(self.console, "isatty", lambda: False)())

    def __getattr__(self, name: str):  # encoding, fileno, ... come from the console
        return getattr(self.console, name)


def _unique(fpath: str) -> str:
    """Dassl never overwrites a log: an existing ``fpath`` gets a ``-YYYY-MM-DD-HH-MM-SS`` suffix."""
    if not osp.exists(fpath):
        return fpath
    stamped = fpath + time.strftime("-%Y-%m-%d-%H-%M-%S")
    candidate, i = stamped, 1
    while osp.exists(candidate):
        candidate = f"{stamped}-{i}"
        i += 1
    return candidate


_ACTIVE: Logger | None = None  # the Logger opened by the last setup_logger call


def setup_logger(output: str | None = None) -> str | None:
    """Tee ``sys.stdout`` into a log file and return that file's path.

    Args:
        output: a file path ending in ``.txt``/``.log``, or a directory (the log is
            ``<output>/log.txt``); ``None`` sets up nothing and returns ``None``.

    An existing log is never overwritten: the new one gets a timestamp suffix
    (``log.txt-2024-01-31-12-00-00``). Calling again with the same ``output`` keeps appending to the
    current log (idempotent); calling with a different one closes it and switches to the new file.
    """
    global _ACTIVE
    if output is None:
        return None
    output = str(output)
    fpath = output if output.endswith(_LOG_SUFFIXES) else osp.join(output, "log.txt")
    requested = osp.abspath(fpath)
    current = sys.stdout
    console = current.console if isinstance(current, Logger) else current
    if _ACTIVE is not None and _ACTIVE.requested == requested and not _ACTIVE.file.closed:
        if current is _ACTIVE:
            return _ACTIVE.fpath
        actual = _ACTIVE.fpath  # stdout was replaced meanwhile: keep appending to the same file
    else:
        mkdir_if_missing(osp.dirname(requested))
        actual = _unique(fpath)
    if _ACTIVE is not None:
        _ACTIVE.close()
    if isinstance(current, Logger):
        current.close()
    _ACTIVE = Logger(console, actual, requested=requested)
    sys.stdout = _ACTIVE
    return actual


def reset_logger() -> None:
    """Close the log file opened by ``setup_logger`` and restore the original ``sys.stdout``."""
    global _ACTIVE
    current = sys.stdout
    if isinstance(current, Logger):
        current.close()
        sys.stdout = current.console
    if _ACTIVE is not None:
        _ACTIVE.close()
        _ACTIVE = None


class _ConsoleAndLog(logging.Handler):
    """Records at ``console_level`` and above go to the console and the log file of ``setup_logger``;
    records below it (per-client detail) to the log file only. The streams are looked up per record,
    so a later ``setup_logger`` (or a test's captured stdout) is followed."""

    def __init__(self, console_level: int):
        super().__init__(logging.DEBUG)
        self.console_level = console_level

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + "\n"
            tee = sys.stdout if isinstance(sys.stdout, Logger) else None
            if record.levelno >= self.console_level:
                (tee.console if tee is not None else sys.stdout).write(text)
            log = tee if tee is not None else _ACTIVE
            if log is not None and not log.file.closed:
                log.file.write(text)
                log.file.flush()
        except Exception:  # noqa: BLE001 - logging must never end a run
            self.handleError(record)


def configure_logging(name: str = "fedtv", verbose: bool = False) -> None:
    """Route logger ``name`` (and its children): INFO and above to the console and the log file,
    DEBUG to the log file only, or to the console as well with ``verbose``; other loggers' warnings
    to both. Idempotent: a second call replaces the first one's handlers. Records still propagate
    (pytest's caplog sees them)."""
    log, root = logging.getLogger(name), logging.getLogger()
    for logger in (log, root):
        for handler in [h for h in logger.handlers if isinstance(h, _ConsoleAndLog)]:
            logger.removeHandler(handler)
    log.addHandler(_ConsoleAndLog(logging.DEBUG if verbose else logging.INFO))
    log.setLevel(logging.DEBUG)
    if not root.handlers:
        # Other libraries' warnings, once and in the same form; this handler also keeps a library's
        # root-level logging.info() from installing basicConfig's "INFO:name:" copy of every line.
        others = _ConsoleAndLog(logging.WARNING)
        others.setLevel(logging.WARNING)
        others.addFilter(lambda record: record.name != name and not record.name.startswith(name + "."))
        root.addHandler(others)
