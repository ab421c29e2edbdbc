"""The trainer registry and ``build_trainer``."""
from __future__ import annotations

from typing import Any

from dassl.utils.registry import Registry

TRAINER_REGISTRY = Registry("TRAINER")


def build_trainer(cfg, **kwargs: Any):
    """Instantiate the trainer registered as ``cfg.TRAINER.NAME``.

    Raises:
        KeyError: the name is not registered; the message lists the registered trainers.
    """
    name = cfg.TRAINER.NAME
    if name not in TRAINER_REGISTRY:
        raise KeyError(
            f"unknown trainer '{name}'; registered trainers: {', '.join(TRAINER_REGISTRY.registered_names())}"
        )
    return TRAINER_REGISTRY.get(name)(cfg, **kwargs)
