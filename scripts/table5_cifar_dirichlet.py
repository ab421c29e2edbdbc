#!/usr/bin/env python
"""FedPGP Table 5: CIFAR-10 / CIFAR-100, Dirichlet(0.3) non-IID over 100 clients, mean +- std over seeds.

100 clients, 10 % sampled per round (round 1: all), 150 rounds of 1 local epoch, all training
images, all classes; evaluated every 10th round and at the end (Local = every client on its own
test split). CIFAR-100 uses the coarse/fine hierarchical Dirichlet split of the published code.

    python scripts/table5_cifar_dirichlet.py --root DATA/ --output-root output/table5 --report
    python scripts/table5_cifar_dirichlet.py --toy --report
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools.experiments import Axis, Experiment, Point  # noqa: E402
from tools.protocols import dirichlet_100_clients  # noqa: E402

METHODS = ["ZeroshotCLIP", "CoOp", "PromptFL", "PromptProx", "FedPGP", "FedTV"]


def configure(point: Point, toy: bool) -> None:
    point.flags["--trainer"] = point.values["methods"]
    dirichlet_100_clients(point, toy, point.values["datasets"])


EXPERIMENT = Experiment(
    table="dirichlet", title="Table 5: Dirichlet non-IID, 100 clients (Local accuracy)",
    axes=[Axis("datasets", ["cifar10", "cifar100"], ["toyworld"], "datasets", free=True),
          Axis("methods", METHODS, ["PromptFL", "FedPGP"], "trainers"),
          Axis("seeds", ["1", "2", "3"], ["1", "2"], "seeds", free=True)],
    configure=configure, default_output="output/table5_dirichlet", description=__doc__)

if __name__ == "__main__":
    sys.exit(EXPERIMENT.cli())
