#!/usr/bin/env python
"""FedTV ablations: one switch of trainers/fedtv.py off at a time, base-to-novel setting.

10 clients, pathological split of the base classes, 16 shots; rounds, local epochs and learning
rate are FedTV's published defaults (configs/trainers/FedTV/<backbone>.yaml: 10 rounds of 2 epochs).
  full               FedTV
  wo_ortho           TRAINER.FEDTV.ORTHO_WEIGHT 0          no orthogonality loss
  wo_contrastive     TRAINER.FEDTV.MU 0                    no prompt contrastive loss
  wo_global_adapter  TRAINER.FEDTV.GLOBAL_ADAPTER False
  wo_local_adapter   TRAINER.FEDTV.LOCAL_ADAPTER False
  wo_adapters        both adapters off (text side only)
  wo_fusion          TRAINER.FEDTV.FUSION mean             equal weights instead of dynamic visual fusion
  fedavg             TRAINER.FEDTV.AGGREGATION fedavg      FedAvg instead of similarity-aware aggregation
  lowrank_uv         TRAINER.FEDTV.ADAPTATION lowrank      FedPGP's U V instead of B diag(S) A (no ortho loss)
  fullrank           TRAINER.FEDTV.ADAPTATION fullrank     a free personal prompt (no ortho loss)
  flora              configs/trainers/FedTV/flora_<backbone>.yaml: the earlier FLORA version

    python scripts/fedtv_ablations.py --root DATA/ --output-root output/fedtv_ablations --report
    python scripts/fedtv_ablations.py --toy --report
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from federated.config import REPO_ROOT, backbone_slug  # noqa: E402
from tools.experiments import Axis, Experiment, ExperimentError, Point  # noqa: E402
from tools.protocols import base2novel  # noqa: E402

VARIANTS = {
    "full": [],
    "wo_ortho": ["TRAINER.FEDTV.ORTHO_WEIGHT", "0.0"],
    "wo_contrastive": ["TRAINER.FEDTV.MU", "0.0"],
    "wo_global_adapter": ["TRAINER.FEDTV.GLOBAL_ADAPTER", "False"],
    "wo_local_adapter": ["TRAINER.FEDTV.LOCAL_ADAPTER", "False"],
    "wo_adapters": ["TRAINER.FEDTV.GLOBAL_ADAPTER", "False", "TRAINER.FEDTV.LOCAL_ADAPTER", "False"],
    "wo_fusion": ["TRAINER.FEDTV.FUSION", "mean"],
    "fedavg": ["TRAINER.FEDTV.AGGREGATION", "fedavg"],
    "lowrank_uv": ["TRAINER.FEDTV.ADAPTATION", "lowrank", "TRAINER.FEDTV.ORTHO_WEIGHT", "0.0"],
    "fullrank": ["TRAINER.FEDTV.ADAPTATION", "fullrank", "TRAINER.FEDTV.ORTHO_WEIGHT", "0.0"],
    "flora": [],
}


def configure(point: Point, toy: bool) -> None:
    point.flags["--trainer"] = "FedTV"
    variant = point.values["variants"]
    if variant == "flora":
        path = os.path.join(REPO_ROOT, "configs", "trainers", "FedTV", f"flora_{backbone_slug(point.backbone)}.yaml")
        if not os.path.isfile(path):
            raise ExperimentError(f"variant flora: no FLORA config for backbone {point.backbone} ({path})")
        point.flags["--config-file"] = os.path.relpath(path, REPO_ROOT)
    base2novel(point, toy, rounds=None, local_epochs=None)
    point.opts += VARIANTS[variant]


EXPERIMENT = Experiment(
    table="fedtv_ablation", title="FedTV ablations (Local / Base / Novel / HM)",
    axes=[Axis("datasets", ["oxford_pets", "oxford_flowers", "dtd", "caltech101", "food101"], ["toyworld"],
               "datasets", free=True),
          Axis("variants", list(VARIANTS), ["full", "wo_ortho", "wo_fusion", "fedavg"], "ablation variants",
               choices=list(VARIANTS)),
          Axis("seeds", ["1", "2", "3"], ["1"], "seeds", free=True)],
    configure=configure, default_output="output/fedtv_ablations", description=__doc__)

if __name__ == "__main__":
    sys.exit(EXPERIMENT.cli())
