"""The dataset registry and ``build_dataset``."""
from __future__ import annotations

from dassl.utils.registry import Registry

DATASET_REGISTRY = Registry("DATASET")


def build_dataset(cfg):
    """Instantiate the dataset class registered as ``cfg.DATASET.NAME`` with ``cfg``."""
    if cfg.DATASET.NAME not in DATASET_REGISTRY:
        raise KeyError(
            f"unknown dataset '{cfg.DATASET.NAME}'; registered datasets: "
            f"{', '.join(DATASET_REGISTRY.registered_names())}"
        )
    return DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)
