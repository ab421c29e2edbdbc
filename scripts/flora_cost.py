#!/usr/bin/env python
"""FLoRA's cost claim (34.72x faster, 2.47x less memory than full fine-tuning): time and memory ratios.

Every method trains a few rounds of the FLoRA setting (IID, 10 clients, 1 local epoch) without
evaluation until the last round; the report reads seconds per training round (median over the
rounds that did not evaluate) from results.json and peak memory from run_info.json (CUDA: tensors
allocated; CPU: peak RSS of the process), and prints the ratios against FedFFT. Run without
--in-process so that every method's peak memory is its own process's.

    python scripts/flora_cost.py --root DATA/ --output-root output/flora_cost --report
    python scripts/flora_cost.py --toy --report
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools.experiments import Axis, Experiment, Point  # noqa: E402
from tools.protocols import flora_setting  # noqa: E402


def configure(point: Point, toy: bool) -> None:
    point.flags["--trainer"] = point.values["methods"]
    flora_setting(point, toy, "iid")
    point.flags["--rounds"] = "2" if toy else "5"
    point.opts += ["FED.ZS_REFERENCE", "False", "TEST.EVAL_FREQ", "1000000"]


EXPERIMENT = Experiment(
    table="cost", title="FLoRA: training time and memory against full fine-tuning (FedFFT)",
    axes=[Axis("datasets", ["cifar10"], ["toyworld"], "datasets", free=True),
          Axis("methods", ["FedFFT", "FLoRA", "CELoRA", "FedLC", "FedAA", "PromptFL"], ["FedFFT", "FLoRA", "CELoRA"],
               "trainers (FedFFT is the reference of the ratios)"),
          Axis("seeds", ["1"], ["1"], "seeds", free=True)],
    configure=configure, default_backbone="ViT-B/32", default_output="output/flora_cost", description=__doc__)

if __name__ == "__main__":
    sys.exit(EXPERIMENT.cli())
