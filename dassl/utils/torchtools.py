"""Model helpers: parameter counting and Dassl-style checkpoints."""
from __future__ import annotations

import os.path as osp
import shutil
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .atomic import atomic_write, atomic_write_text
from .tools import mkdir_if_missing

__all__ = [
    "count_num_param",
    "load_checkpoint",
    "load_pretrained_weights",
    "resume_from_checkpoint",
    "save_checkpoint",
]


def count_num_param(model: nn.Module | None = None, params: Iterable[torch.Tensor] | None = None) -> int:
    """Number of scalar entries in ``model.parameters()`` or in ``params`` (all of them, trainable or not).

    Exactly one of ``model`` and ``params`` should be given; ``model`` wins when both are.
    """
    if model is not None:
        return sum(p.numel() for p in model.parameters())
    if params is not None:
        total = 0
        for p in params:
            if isinstance(p, dict):  # a param group
                total += sum(q.numel() for q in p["params"])
            else:
                total += p.numel()
        return total
    raise ValueError("count_num_param needs model or params")


def _strip_module_prefix(state_dict: dict[str, Any]) -> OrderedDict:
    out = OrderedDict()
    for k, v in state_dict.items():
        out[k[7:] if k.startswith("module.") else k] = v
    return out


def save_checkpoint(
    state: dict[str, Any],
    save_dir: str,
    is_best: bool = False,
    remove_module_from_keys: bool = True,
    model_name: str = "",
) -> str:
    """Save ``state`` (with keys such as ``state_dict``, ``epoch``, ``optimizer``, ``scheduler``).

    The file is ``<save_dir>/<model_name>``, by default ``model.pth.tar-<epoch>``; its name is also
    written to ``<save_dir>/checkpoint`` (read back by ``resume_from_checkpoint``). With ``is_best``
    a copy is kept as ``<save_dir>/model-best.pth.tar``. Returns the checkpoint path.
    """
    mkdir_if_missing(save_dir)
    if remove_module_from_keys and "state_dict" in state:
        state = dict(state)
        state["state_dict"] = _strip_module_prefix(state["state_dict"])
    if not model_name:
        model_name = f"model.pth.tar-{state['epoch']}"
    fpath = osp.join(save_dir, model_name)
    atomic_write(fpath, lambda f: torch.save(state, f))
    atomic_write_text(osp.join(save_dir, "checkpoint"), f"{osp.basename(fpath)}\n")
    if is_best:
        shutil.copy(fpath, osp.join(osp.dirname(fpath), "model-best.pth.tar"))
    return fpath


def load_checkpoint(fpath: str, weights_only: bool = True) -> dict[str, Any]:
    """Load a checkpoint saved by ``save_checkpoint`` onto the CPU.

    ``weights_only=True`` (the default): tensors and plain containers only, which is what Dassl's
    model, optimiser and scheduler states are; a file naming any other object is refused, never run.
    """
    if not fpath:
        raise ValueError("load_checkpoint: empty file path")
    if not osp.exists(fpath):
        raise FileNotFoundError(f"No checkpoint at '{fpath}'")
    return torch.load(fpath, map_location="cpu", weights_only=weights_only)


def resume_from_checkpoint(
    fdir: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
) -> int:
    """Restore the checkpoint named in ``<fdir>/checkpoint`` and return the epoch to start from."""
    with open(osp.join(fdir, "checkpoint")) as f:
        fpath = osp.join(fdir, f.readline().strip())
    ckpt = load_checkpoint(fpath)
    model.load_state_dict(ckpt["state_dict"])
    if optimizer is not None and ckpt.get("optimizer") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    return int(ckpt["epoch"])


def load_pretrained_weights(model: nn.Module, weight_path: str) -> tuple[list[str], list[str]]:
    """Copy the tensors of a checkpoint whose names and shapes match ``model``'s.

    Returns ``(matched_keys, discarded_keys)``.
    """
    ckpt = load_checkpoint(weight_path)
    state_dict = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    state_dict = _strip_module_prefix(state_dict)
    model_dict = model.state_dict()
    matched, discarded = [], []
    new_state = OrderedDict()
    for k, v in state_dict.items():
        if k in model_dict and model_dict[k].shape == v.shape:
            new_state[k] = v
            matched.append(k)
        else:
            discarded.append(k)
    model_dict.update(new_state)
    model.load_state_dict(model_dict)
    return matched, discarded
