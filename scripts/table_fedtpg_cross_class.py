#!/usr/bin/env python
"""FedTPG's cross-class protocol (ICLR 2024, Table 1): the base classes of 9 CoOp datasets in 20-class
clients, Local / Base / Novel per dataset then averaged over the datasets.

Protocol (``configs/datasets/fedtpg_mixture.yaml``, ``federated/mixture.py``): 30 clients, each with its own
20-way label space, all sampled every round, 8 shots per class, 500 rounds of one local epoch, batch 200, no
augmentation; each method's hyper-parameters from ``configs/trainers/<METHOD>/<backbone>.yaml``
(FedTPG's: SGD 0.003, cosine over the rounds per client). The toy miniature
(``configs/datasets/toyworld_mixture.yaml``) uses three rendering styles of the toy world as three
"datasets".

    python scripts/table_fedtpg_cross_class.py --root DATA/ --report
    python scripts/table_fedtpg_cross_class.py --toy --report

The published FedTPG numbers are in ``tools/published/fedtpg.json`` (the paper's table and the official
repository's committed log).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools.experiments import Axis, Experiment, Point  # noqa: E402

METHODS = ["ZeroshotCLIP", "PromptFL", "KgCoOp", "FedTPG"]


def configure(point: Point, toy: bool) -> None:
    point.flags["--trainer"] = point.values["methods"]
    if toy:
        point.flags.update({"--rounds": "2", "--local-epochs": "1", "--num-shots": "4"})
        point.opts += ["DATASET.CLASSES_PER_CLIENT", "3"]
    else:
        point.flags.update({"--frac": "1", "--rounds": "500", "--local-epochs": "1", "--num-shots": "8",
                            "--train-batch-size": "200"})


EXPERIMENT = Experiment(
    table="base2novel", title="FedTPG's cross-class protocol: 9 datasets' base classes in 20-class clients",
    axes=[Axis("datasets", ["fedtpg_mixture"], ["toyworld_mixture"], "dataset configs (configs/datasets/*.yaml)",
               free=True),
          Axis("methods", METHODS, ["ZeroshotCLIP", "PromptFL", "FedTPG"], "trainers"),
          Axis("seeds", ["43", "1", "2"], ["1"], "seeds", free=True)],
    configure=configure, default_output="output/table_fedtpg_cross_class", description=__doc__)

if __name__ == "__main__":
    sys.exit(EXPERIMENT.cli())
