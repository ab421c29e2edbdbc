#!/usr/bin/env python
"""FedPGP Table 11: Local accuracy over the rank of U V (bottleneck 1 2 4 8) x shots (1 2 4 8 16).

10 clients, pathological split of all classes, 25 rounds of 2 local epochs, batch = shots, mu 0.5
(the published plot_few_shot.sh).

    python scripts/table11_fedpgp_rank_shots.py --root DATA/ --output-root output/table11 --report
    python scripts/table11_fedpgp_rank_shots.py --datasets dtd --ranks 1 8 --shots 1 16
    python scripts/table11_fedpgp_rank_shots.py --toy --report
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools.experiments import Axis, Experiment, Point  # noqa: E402
from tools.protocols import all_classes_fewshot  # noqa: E402


def configure(point: Point, toy: bool) -> None:
    point.flags["--trainer"] = "FedPGP"
    all_classes_fewshot(point, toy, int(point.values["shots"]))
    point.opts += ["TRAINER.FEDPGP.BOTTLENECK", point.values["ranks"], "TRAINER.FEDPGP.MU", "0.5",
                   "TRAINER.FEDPGP.TEMP", "0.5"]


EXPERIMENT = Experiment(
    table="rank_shots", title="Table 11: FedPGP rank x shots (Local accuracy)",
    axes=[Axis("datasets", ["oxford_pets", "oxford_flowers", "dtd", "caltech101"], ["toyworld"], "datasets",
               free=True),
          Axis("ranks", ["1", "2", "4", "8"], ["1", "8"], "ranks of U V", free=True),
          Axis("shots", ["1", "2", "4", "8", "16"], ["1", "4"], "shots per class", free=True),
          Axis("seeds", ["1"], ["1"], "seeds", free=True)],
    configure=configure, default_output="output/table11_fedpgp_rank_shots", description=__doc__)

if __name__ == "__main__":
    sys.exit(EXPERIMENT.cli())
