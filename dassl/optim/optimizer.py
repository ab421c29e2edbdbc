"""``build_optimizer``: a torch optimiser from the ``OPTIM`` config node."""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["AVAI_OPTIMS", "build_optimizer"]

AVAI_OPTIMS = ("adam", "amsgrad", "sgd", "rmsprop", "radam", "adamw")


def _trainable(params: Iterable[Any]) -> list[Any]:
    """Keep the tensors that require grad; param-group dicts keep only their trainable tensors."""
    out: list[Any] = []
    for p in params:
        if isinstance(p, dict):
            if "params" not in p:
                raise ValueError("a param group dict needs a 'params' entry")
            group_params = p["params"]
            group_params = [group_params] if isinstance(group_params, torch.Tensor) else list(group_params)
            kept = [q for q in group_params if q.requires_grad]
            if kept:
                out.append({**p, "params": kept})
        elif isinstance(p, torch.Tensor):
            if p.requires_grad:
                out.append(p)
        else:
            raise TypeError(f"expected tensors or param-group dicts, got {type(p).__name__}")
    return out


def _staged_groups(model: nn.Module, optim_cfg) -> list[dict[str, Any]]:
    """Dassl's staged LR: children named in ``NEW_LAYERS`` get ``LR``, the rest ``LR * BASE_LR_MULT``."""
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    new_layers = optim_cfg.NEW_LAYERS
    new_layers = [new_layers] if isinstance(new_layers, str) else list(new_layers)
    if not new_layers:
        warnings.warn("OPTIM.STAGED_LR is True but OPTIM.NEW_LAYERS is empty", stacklevel=3)
    children = dict(model.named_children())
    unknown = [n for n in new_layers if n not in children]
    if unknown:
        raise ValueError(f"OPTIM.NEW_LAYERS {unknown} are not children of the model; children: {sorted(children)}")
    base, new = [], []
    for name, module in children.items():
        (new if name in new_layers else base).extend(module.parameters())
    return [
        {"params": base, "lr": optim_cfg.LR * optim_cfg.BASE_LR_MULT},
        {"params": new},
    ]


def build_optimizer(
    model_or_params: nn.Module | Iterable[Any],
    optim_cfg,
    param_groups: list[dict[str, Any]] | None = None,
) -> torch.optim.Optimizer:
    """Build the optimiser named by ``optim_cfg.NAME`` (the ``cfg.OPTIM`` node).

    Args:
        model_or_params: an ``nn.Module`` (its parameters with ``requires_grad``) or an iterable of
            tensors / param-group dicts (frozen tensors are dropped).
        optim_cfg: ``cfg.OPTIM`` (NAME, LR, WEIGHT_DECAY, MOMENTUM, SGD_*, RMSPROP_ALPHA,
            ADAM_BETA1/2, ADAM_EPS, STAGED_LR, NEW_LAYERS, BASE_LR_MULT).
        param_groups: explicit param groups; when given they are used instead of
            ``model_or_params``'s parameters (STAGED_LR is then ignored).

    Raises:
        ValueError: unknown optimiser name (the message lists the valid ones), or nothing to train.
    """
    name = str(optim_cfg.NAME).lower()
    if name not in AVAI_OPTIMS:
        raise ValueError(f"Unknown optimizer '{optim_cfg.NAME}'; valid names: {', '.join(AVAI_OPTIMS)}")
    lr = float(optim_cfg.LR)
    wd = float(optim_cfg.WEIGHT_DECAY)
    betas = (float(optim_cfg.ADAM_BETA1), float(optim_cfg.ADAM_BETA2))
    eps = float(optim_cfg.get("ADAM_EPS", 1e-8))

    if param_groups is not None:
        if optim_cfg.STAGED_LR:
            warnings.warn("param_groups given: OPTIM.STAGED_LR is ignored", stacklevel=2)
        params = _trainable(param_groups)
    elif isinstance(model_or_params, nn.Module):
        params = _staged_groups(model_or_params, optim_cfg) if optim_cfg.STAGED_LR else model_or_params.parameters()
        params = _trainable(params)
    else:
        if optim_cfg.STAGED_LR:
            raise TypeError("OPTIM.STAGED_LR needs an nn.Module, got an iterable of parameters")
        params = _trainable(model_or_params)
    if not params:
        raise ValueError("build_optimizer: no trainable parameters (none has requires_grad=True)")

    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, betas=betas, eps=eps)
    if name == "amsgrad":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, betas=betas, eps=eps, amsgrad=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, betas=betas, eps=eps)
    if name == "radam":
        return torch.optim.RAdam(params, lr=lr, weight_decay=wd, betas=betas, eps=eps)
    if name == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=float(optim_cfg.MOMENTUM),
            weight_decay=wd,
            dampening=float(optim_cfg.SGD_DAMPNING),
            nesterov=bool(optim_cfg.SGD_NESTEROV),
        )
    # rmsprop
    return torch.optim.RMSprop(
        params, lr=lr, momentum=float(optim_cfg.MOMENTUM), weight_decay=wd, alpha=float(optim_cfg.RMSPROP_ALPHA)
    )
