"""File-system, JSON, image and seeding helpers."""
from __future__ import annotations

import errno
import json
import os
import os.path as osp
import random
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = [
    "listdir_nohidden",
    "mkdir_if_missing",
    "read_image",
    "read_json",
    "set_random_seed",
    "write_json",
]


def mkdir_if_missing(dirname: str) -> None:
    """Create ``dirname`` (and its parents) unless it exists; safe under concurrent creation."""
    if not dirname:
        return
    try:
        os.makedirs(dirname, exist_ok=True)
    except OSError as exc:  # a file of that name, permissions, ...
        if exc.errno != errno.EEXIST or not osp.isdir(dirname):
            raise


def read_json(fpath: str) -> Any:
    """Load and return the JSON object stored in ``fpath``."""
    with open(fpath, encoding="utf-8") as f:
        return json.load(f)


def write_json(obj: Any, fpath: str) -> None:
    """Write ``obj`` to ``fpath`` as indented JSON, creating the parent folder if needed."""
    mkdir_if_missing(osp.dirname(fpath))
    with open(fpath, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=4, separators=(",", ": "))


def read_image(path: str) -> Image.Image:
    """Read an image file and return it as a fully loaded ``PIL.Image`` in RGB mode.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names the path).
        OSError: the file exists but cannot be decoded as an image.
    """
    if not osp.exists(path):
        raise FileNotFoundError(f"No image file at '{path}'")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except OSError as exc:
        raise OSError(f"Cannot read the image '{path}': {exc}") from exc


def listdir_nohidden(path: str, sort: bool = False) -> list[str]:
    """Names in ``path`` that do not start with a dot, optionally sorted."""
    items = [f for f in os.listdir(path) if not f.startswith(".")]
    if sort:
        items.sort()
    return items


def set_random_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and every CUDA device) with ``seed``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)

