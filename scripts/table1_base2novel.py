#!/usr/bin/env python
"""FedPGP Table 1: base-to-novel generalisation on five datasets, every method, 3 seeds.

Train on the base classes (10 clients, pathological split, 16 shots, 25 rounds of 2 local epochs);
report Local (each client's own classes), Base, Novel and HM = HM(Local, Base, Novel) = 3/(1/L+1/B+1/N), as
the paper's HM column (HM(Base, Novel) and the other summaries: the report's "Every summary"). The CLIP row is
ZeroshotCLIP (hand-crafted prompt, nothing trained). FedTV is added as a row of its own.

    python scripts/table1_base2novel.py --root DATA/ --output-root output/table1 --report
    python scripts/table1_base2novel.py --toy --report           # the miniature on the toy world
    python -m tools.report output/table1 --table base2novel --out output/table1/report
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools.experiments import Axis, Experiment, Point  # noqa: E402
from tools.protocols import base2novel  # noqa: E402

DATASETS = ["oxford_pets", "oxford_flowers", "dtd", "caltech101", "food101"]
METHODS = ["ZeroshotCLIP", "CoOp", "PromptFL", "PromptProx", "FedMaPLe", "FedCoCoOp", "FedOTP", "FedPGP", "FedTV"]


def configure(point: Point, toy: bool) -> None:
    point.flags["--trainer"] = point.values["methods"]
    base2novel(point, toy)


EXPERIMENT = Experiment(
    table="base2novel", title="Table 1: base-to-novel generalisation (Local / Base / Novel / HM)",
    axes=[Axis("datasets", DATASETS, ["toyworld"], "dataset configs (configs/datasets/*.yaml)", free=True),
          Axis("methods", METHODS, ["ZeroshotCLIP", "PromptFL", "FedPGP"], "trainers"),
          Axis("seeds", ["1", "2", "3"], ["1", "2"], "seeds", free=True)],
    configure=configure, default_output="output/table1_base2novel", description=__doc__)

if __name__ == "__main__":
    sys.exit(EXPERIMENT.cli())
