"""Dassl-style checkpoint loading (what a ported CoOp trainer calls: ``load_checkpoint`` in its ``load_model``,
``load_pretrained_weights`` for ``MODEL.INIT_WEIGHTS``)."""
from __future__ import annotations

import os.path as osp
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

__all__ = ["load_checkpoint", "load_pretrained_weights"]


def _strip_module_prefix(state_dict: dict[str, Any]) -> OrderedDict:
    out = OrderedDict()
    for k, v in state_dict.items():
        out[k[7:] if k.startswith("module.") else k] = v
    return out


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
