#!/usr/bin/env python
"""CE-LoRA: communication against accuracy (only the r x r matrices C are uploaded).

FLoRA's setting with Dirichlet(1.0) label skew (the CE-LoRA code's alpha), 10 clients, 50 rounds
of 1 local epoch, ViT-B/32. The report lists, per method: shared (uploaded) parameters, bytes up and
down per client per round, the total bytes communicated over the run (all sampled clients, both
directions), the reduction against FLoRA, and the Local accuracy (mean +- std over seeds).

    python scripts/celora_communication.py --root DATA/ --output-root output/celora --report
    python scripts/celora_communication.py --toy --report
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools.experiments import Axis, Experiment, Point  # noqa: E402
from tools.protocols import flora_setting  # noqa: E402


def configure(point: Point, toy: bool) -> None:
    point.flags["--trainer"] = point.values["methods"]
    flora_setting(point, toy, "noniid", beta=1.0)


EXPERIMENT = Experiment(
    table="communication", title="CE-LoRA: bytes communicated and accuracy",
    axes=[Axis("datasets", ["cifar10", "cifar100", "oxford_pets", "dtd"], ["toyworld"], "datasets", free=True),
          Axis("methods", ["FedFFT", "FLoRA", "CELoRA", "PromptFL", "FedPGP"], ["FLoRA", "CELoRA"], "trainers"),
          Axis("seeds", ["1", "2", "3"], ["1"], "seeds", free=True)],
    configure=configure, default_backbone="ViT-B/32", default_output="output/celora_communication",
    description=__doc__)

if __name__ == "__main__":
    sys.exit(EXPERIMENT.cli())
