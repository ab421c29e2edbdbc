#!/usr/bin/env python
"""FLoRA (arXiv 2404.15182): accuracy of the weight-tuning methods under IID and non-IID clients.

10 clients, 50 rounds of 1 local epoch, all classes and training images, ViT-B/32; IID split or
Dirichlet(0.1) label skew. Methods: full fine-tuning (FedFFT), linear classifier (FedLC), attention
adapter (FedAA), FLoRA (LoRA on the text tower), CE-LoRA; optimiser settings from each method's
configs/trainers/<METHOD>/vit_b32.yaml (FLoRA's Adam 5e-5).

    python scripts/flora_iid_noniid.py --root DATA/ --output-root output/flora --report
    python scripts/flora_iid_noniid.py --toy --report
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools.experiments import Axis, Experiment, Point  # noqa: E402
from tools.protocols import flora_setting  # noqa: E402

DATASETS = ["cifar10", "cifar100", "tiny_imagenet", "oxford_pets", "oxford_flowers", "fgvc_aircraft", "dtd",
            "eurosat", "fashion_mnist"]


def configure(point: Point, toy: bool) -> None:
    point.flags["--trainer"] = point.values["methods"]
    flora_setting(point, toy, point.values["partitions"])


EXPERIMENT = Experiment(
    table="flora", title="FLoRA: accuracy under IID and non-IID (Dirichlet 0.1) clients",
    axes=[Axis("datasets", DATASETS, ["toyworld"], "datasets", free=True),
          Axis("methods", ["ZeroshotCLIP", "FedFFT", "FedLC", "FedAA", "FLoRA", "CELoRA"], ["FedLC", "FLoRA"],
               "trainers"),
          Axis("partitions", ["iid", "noniid"], ["iid", "noniid"], "client splits", choices=["iid", "noniid"]),
          Axis("seeds", ["1"], ["1"], "seeds", free=True)],
    configure=configure, default_backbone="ViT-B/32", default_output="output/flora_iid_noniid",
    description=__doc__)

if __name__ == "__main__":
    sys.exit(EXPERIMENT.cli())
