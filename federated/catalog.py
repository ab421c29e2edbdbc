"""The names and config keys the command line checks before it imports torch.

Building the real config tree imports every trainer and dataset (and torch with them: seconds). The
command line instead checks a user's flags, names and ``KEY VALUE`` overrides against this catalogue
first, so a mistake is reported in well under two seconds: ``federated/catalog.json`` holds the
registered trainer and dataset names, the supported CLIP backbone names, the image transform and
interpolation names of ``INPUT`` and the full default config tree. It is generated from the registries
(``python -m federated.catalog`` rewrites it) and a test fails when it differs from what they give.
The real config is still built and checked afterwards, so a stale catalogue can only make the early
check too strict, never let a mistake through.
"""
from __future__ import annotations

import json
import os
import sys

from yacs.config import CfgNode as CN

CATALOG_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "catalog.json")


def _plain(node):
    """A CfgNode as plain JSON values (tuples become lists; yacs casts them back on merge)."""
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    return node


def compute() -> dict:
    """The catalogue from the registries (imports every trainer, dataset and open_clip)."""
    from clip.names import PAPER_BACKBONES, local_model_names, supported_backbones
    from dassl.data.datasets import DATASET_REGISTRY
    from dassl.data.transforms import AVAI_CHOICES, INTERPOLATION_MODES
    from dassl.engine import TRAINER_REGISTRY
    from federated.config import get_cfg

    cfg = get_cfg()
    return {
        "trainers": sorted(TRAINER_REGISTRY.registered_names()),
        "datasets": sorted(DATASET_REGISTRY.registered_names()),
        "backbones": [*PAPER_BACKBONES, *local_model_names(), *supported_backbones()],
        "transforms": list(AVAI_CHOICES),
        "interpolations": list(INTERPOLATION_MODES),
        "defaults": _plain(cfg),
    }


def load() -> dict:
    """The shipped catalogue (no torch)."""
    with open(CATALOG_PATH) as f:
        return json.load(f)


def default_cfg(catalog: dict) -> CN:
    """The default config tree recorded in ``catalog`` (a fresh, mutable copy)."""
    return CN(catalog["defaults"])


def write() -> None:
    with open(CATALOG_PATH, "w") as f:
        json.dump(compute(), f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    write()
    print(f"wrote {CATALOG_PATH}", file=sys.stderr)
