"""``build_lr_scheduler``: epoch-wise LR schedules with Dassl's optional warmup.

All schedulers are stepped once per epoch, after that epoch's optimiser steps. The learning rate
of epoch ``e`` (0-based) is, for base LR ``b`` and ``MAX_EPOCH`` = ``T``:

* ``single_step``: ``b * GAMMA ** (e // s)`` with ``s = STEPSIZE[-1]`` (``s <= 0`` means ``s = T``);
* ``multi_step``: ``b * GAMMA ** (number of milestones in STEPSIZE that are <= e)``;
* ``cosine``: ``b * (1 + cos(pi * e / T)) / 2``.

With ``WARMUP_EPOCH = W > 0`` the first ``W`` epochs use the warmup LR instead
(``constant``: ``WARMUP_CONS_LR``; ``linear``: ``WARMUP_MIN_LR`` at epoch 0, then ``b * e / W``),
after which the main schedule runs from its epoch ``e - W`` (``WARMUP_RECOUNT=True``, Dassl's
default) or from epoch ``e`` (``WARMUP_RECOUNT=False``).
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, MultiStepLR, StepLR

__all__ = [
    "AVAI_SCHEDS",
    "ConstantWarmupScheduler",
    "LinearWarmupScheduler",
    "build_lr_scheduler",
]

AVAI_SCHEDS = ("single_step", "multi_step", "cosine")
AVAI_WARMUPS = ("constant", "linear")


class _BaseWarmupScheduler(LRScheduler):
    """Runs a warmup rule for ``warmup_epoch`` epochs, then hands over to ``successor``.

    ``successor`` must be built on the same optimiser before this wrapper.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, successor: LRScheduler, warmup_epoch: int,
                 last_epoch: int = -1):
        if warmup_epoch < 1:
            raise ValueError(f"warmup_epoch must be >= 1, got {warmup_epoch}")
        self.successor = successor
        self.warmup_epoch = int(warmup_epoch)
        super().__init__(optimizer, last_epoch)

    def warmup_lr(self) -> list[float]:
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        if self.last_epoch >= self.warmup_epoch:
            return list(self.successor.get_last_lr())
        return self.warmup_lr()

    def step(self, epoch: int | None = None) -> None:
        if epoch is not None:
            raise ValueError("warmup schedulers only support step() without an epoch argument")
        if self.last_epoch >= self.warmup_epoch:
            # The optimiser already holds the successor's last LR: let it take the next step.
            self.successor.step()
            self._last_lr = list(self.successor.get_last_lr())
        else:
            super().step()

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "successor")}
        state["successor"] = self.successor.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self.successor.load_state_dict(state_dict.pop("successor"))
        self.__dict__.update(state_dict)


class ConstantWarmupScheduler(_BaseWarmupScheduler):
    """LR ``cons_lr`` for every param group during the first ``warmup_epoch`` epochs."""

    def __init__(self, optimizer: torch.optim.Optimizer, successor: LRScheduler, warmup_epoch: int,
                 cons_lr: float, last_epoch: int = -1):
        self.cons_lr = float(cons_lr)
        super().__init__(optimizer, successor, warmup_epoch, last_epoch)

    def warmup_lr(self) -> list[float]:
        return [self.cons_lr for _ in self.base_lrs]


class LinearWarmupScheduler(_BaseWarmupScheduler):
    """LR ``min_lr`` at epoch 0, then ``base_lr * epoch / warmup_epoch`` until ``warmup_epoch``."""

    def __init__(self, optimizer: torch.optim.Optimizer, successor: LRScheduler, warmup_epoch: int,
                 min_lr: float, last_epoch: int = -1):
        self.min_lr = float(min_lr)
        super().__init__(optimizer, successor, warmup_epoch, last_epoch)

    def warmup_lr(self) -> list[float]:
        if self.last_epoch == 0:
            return [self.min_lr for _ in self.base_lrs]
        return [lr * self.last_epoch / self.warmup_epoch for lr in self.base_lrs]


def build_lr_scheduler(optimizer: torch.optim.Optimizer, optim_cfg) -> LRScheduler:
    """Build the LR scheduler described by ``optim_cfg`` (the ``cfg.OPTIM`` node); see the module doc.

    Raises:
        ValueError: unknown ``LR_SCHEDULER`` / ``WARMUP_TYPE`` (the message lists the valid ones), or
            an invalid ``STEPSIZE``.
    """
    name = optim_cfg.LR_SCHEDULER
    max_epoch = int(optim_cfg.MAX_EPOCH)
    stepsize = optim_cfg.STEPSIZE
    gamma = float(optim_cfg.GAMMA)
    if name not in AVAI_SCHEDS:
        raise ValueError(f"Unknown LR scheduler '{name}'; valid names: {', '.join(AVAI_SCHEDS)}")

    if name == "single_step":
        if isinstance(stepsize, (list, tuple)):
            stepsize = stepsize[-1]
        stepsize = int(stepsize)
        if stepsize <= 0:
            stepsize = max_epoch  # never decays within MAX_EPOCH
        scheduler: LRScheduler = StepLR(optimizer, step_size=stepsize, gamma=gamma)
    elif name == "multi_step":
        if not isinstance(stepsize, (list, tuple)) or not stepsize:
            raise ValueError(f"multi_step needs a non-empty list/tuple OPTIM.STEPSIZE, got {stepsize!r}")
        scheduler = MultiStepLR(optimizer, milestones=[int(s) for s in stepsize], gamma=gamma)
    else:
        if max_epoch < 1:
            raise ValueError(f"cosine needs OPTIM.MAX_EPOCH >= 1, got {max_epoch}")
        scheduler = CosineAnnealingLR(optimizer, T_max=float(max_epoch))

    warmup_epoch = int(optim_cfg.WARMUP_EPOCH)
    if warmup_epoch > 0:
        if optim_cfg.WARMUP_TYPE not in AVAI_WARMUPS:
            raise ValueError(
                f"Unknown OPTIM.WARMUP_TYPE '{optim_cfg.WARMUP_TYPE}'; valid names: {', '.join(AVAI_WARMUPS)}"
            )
        if not optim_cfg.WARMUP_RECOUNT:
            # Advance the main schedule to epoch W so that it continues at its own epoch e.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(warmup_epoch):
                    scheduler.step()
        if optim_cfg.WARMUP_TYPE == "constant":
            scheduler = ConstantWarmupScheduler(optimizer, scheduler, warmup_epoch, optim_cfg.WARMUP_CONS_LR)
        else:
            scheduler = LinearWarmupScheduler(optimizer, scheduler, warmup_epoch, optim_cfg.WARMUP_MIN_LR)
    return scheduler
