#!/usr/bin/env python
"""The personalised methods of 2024-2026 beside FedPGP, FedOTP, PromptFL and FedTV: base-to-novel
generalisation on the CoOp datasets, 3 seeds.

Protocol: FedPGP's base-to-novel setting (``tools.protocols.base2novel``: 10 clients, all sampled,
pathological split of the base classes, 16 shots, batch 16, 25 rounds of 2 local epochs) for every
method, so the rows are comparable; each method's own hyper-parameters (learning rate, prompt
lengths, theta, adapter sizes ...) come from ``configs/trainers/<METHOD>/<backbone>.yaml``. The
methods' papers used other schedules (PromptFolio and pFedMoAP 10 rounds x 5 epochs, FedPHA 50 x 1, pFedMMA
100 x 1, FedMGP and its code base's IVLP, VPT 10 x 2 with batch 8):
pass ``--rounds`` / ``--local-epochs`` overrides for a method's own schedule. Reported: Local (each
client's own classes), Base, Novel and HM = HM(Local, Base, Novel) (the report's "Every summary" adds
HM(Base, Novel) and (Local + HM(Base, Novel)) / 2, FedMGP's summary). Datasets: FedPGP Table 1's five plus UCF101 and
SUN397 (pFedMMA's base-to-new set). IVLP and VPT are the prompted-image-tower baselines of FedMGP's tables.

    python scripts/table_2026_base2novel.py --root DATA/ --output-root output/table_2026 --report
    python scripts/table_2026_base2novel.py --toy --report         # the miniature on the toy world
    python -m tools.report output/table_2026 --table base2novel --out output/table_2026/report
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools.experiments import Axis, Experiment, Point  # noqa: E402
from tools.protocols import base2novel  # noqa: E402

DATASETS = ["oxford_pets", "oxford_flowers", "dtd", "caltech101", "food101", "ucf101", "sun397"]
METHODS = ["ZeroshotCLIP", "PromptFL", "FedOTP", "FedPGP", "FedTV", "PromptFolio", "FedPHA", "pFedMMA", "FedMGP",
           "IVLP", "VPT", "FedTPG", "pFedMoAP", "FedMVP"]


def configure(point: Point, toy: bool) -> None:
    point.flags["--trainer"] = point.values["methods"]
    base2novel(point, toy)


EXPERIMENT = Experiment(
    table="base2novel", title="Methods of 2024-2026: base-to-novel generalisation (Local / Base / Novel / HM)",
    axes=[Axis("datasets", DATASETS, ["toyworld"], "dataset configs (configs/datasets/*.yaml)", free=True),
          Axis("methods", METHODS, ["ZeroshotCLIP", "PromptFL", "FedPGP", "PromptFolio", "FedPHA", "pFedMMA",
                                    "FedMGP", "IVLP", "VPT", "pFedMoAP"], "trainers"),
          Axis("seeds", ["1", "2", "3"], ["1", "2"], "seeds", free=True)],
    configure=configure, default_output="output/table_2026_base2novel", description=__doc__)

if __name__ == "__main__":
    sys.exit(EXPERIMENT.cli())
