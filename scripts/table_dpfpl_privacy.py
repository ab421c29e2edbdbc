#!/usr/bin/env python
"""DP-FPL (ICLR'25): accuracy against the privacy budget on Caltech101, OxfordPets and OxfordFlowers, 3 seeds.

Protocol (the DP-FPL paper and its published code, docs/REPRODUCING.md "DP-FPL"): 10 clients, all of
them every round, 100 rounds of synchronous FedSGD (one pass over each client's data per round), every
training image (no few-shot subsampling), all classes split among the clients (pathological), batch 32,
SGD lr 0.001, rank 8, clipping norm 10, delta 1e-5 (``configs/trainers/DPFPL/<backbone>.yaml``).
Variants = the published epsilon grid: ``eps0`` (no privacy), ``eps0.1``, ``eps0.2``, ``eps0.4``. Here
epsilon is an accounted (epsilon, 1e-5) budget of each mechanism (opacus RDP accountant); the published
runs used the number as a noise divisor (``published_eps*`` variants: ``NOISE_AS_EPSILON True`` and the
published batch-mean clipping and gradient scale, no guarantee). Reported: Local accuracy (each client
on its own classes). Every run's ``results.json`` holds the epsilon it spent (``privacy``); attack it
with ``python -m tools.mia RUN_DIR --all-clients`` or with DP-FPL's shadow-model attack,
``python -m tools.mia_shadow RUN_DIR --all-clients --shadow-fraction F`` (every training and test image is
a client's here, so the shadow data comes from the val split: its error names the largest F that fits).

    python scripts/table_dpfpl_privacy.py --root DATA/ --output-root output/table_dpfpl --report
    python scripts/table_dpfpl_privacy.py --toy --report         # the miniature on the toy world
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools.experiments import Axis, Experiment, Point  # noqa: E402
from tools.protocols import dpfpl_setting  # noqa: E402

DATASETS = ["caltech101", "oxford_pets", "oxford_flowers"]
PUBLISHED = ["TRAINER.DPFPL.NOISE_AS_EPSILON", "True", "TRAINER.DPFPL.CLIPPING", "batch_mean",
             "TRAINER.DPFPL.GRAD_SCALE", "0.1", "TRAINER.DPFPL.SAMPLING", "shuffle"]
VARIANTS = {
    "eps0": ["TRAINER.DPFPL.EPSILON", "0"],
    "eps0.1": ["TRAINER.DPFPL.EPSILON", "0.1"],
    "eps0.2": ["TRAINER.DPFPL.EPSILON", "0.2"],
    "eps0.4": ["TRAINER.DPFPL.EPSILON", "0.4"],
    "published_eps0.1": ["TRAINER.DPFPL.EPSILON", "0.1", *PUBLISHED],
    "published_eps0.2": ["TRAINER.DPFPL.EPSILON", "0.2", *PUBLISHED],
    "published_eps0.4": ["TRAINER.DPFPL.EPSILON", "0.4", *PUBLISHED],
}


def configure(point: Point, toy: bool) -> None:
    point.flags["--trainer"] = "DPFPL"
    dpfpl_setting(point, toy)
    point.opts += VARIANTS[point.values["variants"]]


EXPERIMENT = Experiment(
    table="dpfpl_privacy", title="DP-FPL: Local accuracy per privacy budget",
    axes=[Axis("datasets", DATASETS, ["toyworld"], "datasets", free=True),
          Axis("variants", list(VARIANTS), ["eps0", "eps0.4", "published_eps0.4"], "privacy variants",
               choices=list(VARIANTS)),
          Axis("seeds", ["1", "2", "3"], ["1"], "seeds", free=True)],
    configure=configure, default_output="output/table_dpfpl_privacy", description=__doc__)

if __name__ == "__main__":
    sys.exit(EXPERIMENT.cli())
