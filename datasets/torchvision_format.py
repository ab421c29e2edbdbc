"""Readers of torchvision's on-disk formats, without torchvision: CIFAR python pickles and MNIST IDX files.

The images stay in memory as ``uint8`` arrays (``Datum.image``); ``Datum.impath`` is a unique id
``<file>#<index>`` so that caches keyed by image ids tell two copies of a dataset apart.
"""
from __future__ import annotations

import gzip
import os
import struct

import numpy as np

from dassl.data.datasets import Datum
from federated.errors import DataError

from .safe_pickle import load_data_pickle

__all__ = ["read_cifar_batch", "read_idx", "to_items"]


def read_cifar_batch(path: str, required: tuple[str, ...] = ()) -> dict:
    """Unpickle one CIFAR python batch (``data_batch_1``, ``test``, ``meta`` ...) with byte keys decoded
    (plain data and numpy arrays only: ``datasets/safe_pickle.py``); ``required``: keys it must hold.

    Raises:
        DataError: the file is unreadable or not a CIFAR pickle.
    """
    try:
        raw = load_data_pickle(path, encoding="bytes")
    except DataError as err:
        raise DataError(f"{err} (a CIFAR python batch: re-extract the archive)") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path} is not a CIFAR python batch (expected a dict)")
    out = {}
    for k, v in raw.items():
        key = k.decode() if isinstance(k, bytes) else k
        if isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [x.decode() for x in v]
        out[key] = v
    missing = [k for k in required if k not in out]
    if missing:
        raise DataError(f"{path} is not a CIFAR python batch: no {', '.join(missing)} entry (re-extract the archive)")
    return out


def cifar_images(batch: dict, path: str) -> np.ndarray:
    """``(N, 32, 32, 3)`` ``uint8`` images of a CIFAR batch (stored as ``(N, 3072)`` channel-major rows)."""
    try:
        return np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    except (KeyError, ValueError, TypeError) as err:
        raise DataError(f"{path}: no valid 'data' array ({err})") from None


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (``.gz`` or not): ubyte labels ``(N,)`` or images ``(N, H, W)``.

    Raises:
        DataError: unreadable file, bad magic number, or a size that disagrees with the header.
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise DataError(f"cannot read the IDX file {path}: {err}") from None
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} ({int(np.prod(dims))} bytes), the file holds {body.size}; "
                        f"the file is truncated")
    return body.reshape(dims)


def to_items(images: np.ndarray, labels, classnames: list[str], source: str) -> list[Datum]:
    """One ``Datum`` per image (``impath = f"{source}#{i}"``), labels checked against ``classnames``."""
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise DataError(f"{source}: the labels are not integers ({err})") from None
    if len(labels) != len(images):
        raise DataError(f"{source}: {len(images)} images but {len(labels)} labels")
    bad = np.flatnonzero((labels < 0) | (labels >= len(classnames)))
    if bad.size:
        raise DataError(f"{source}: label {int(labels[bad[0]])} of item {int(bad[0])} is outside the "
                        f"{len(classnames)} classes")
    return [Datum(impath=f"{source}#{i}", label=int(y), classname=classnames[y], image=images[i])
            for i, y in enumerate(labels.tolist())]


def existing(*candidates: str) -> str | None:
    """The first existing path among ``candidates``."""
    return next((c for c in candidates if os.path.exists(c)), None)
