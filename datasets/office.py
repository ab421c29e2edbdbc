"""Office-Caltech10 (4 domains, 10 classes) in the FedBN pickle layout.

``office_caltech_10/<site>_{train,test}.pkl`` for the sites amazon, caltech, dslr, webcam.
"""
from __future__ import annotations

from dassl.data.datasets import DATASET_REGISTRY

from .fedbn_domains import FedBNDomainDataset


@DATASET_REGISTRY.register()
class Office(FedBNDomainDataset):
    dataset_dir = "office_caltech_10"
    SITES = ("amazon", "caltech", "dslr", "webcam")
    CLASSNAMES = ("back_pack", "bike", "calculator", "headphones", "keyboard", "laptop_computer", "monitor", "mouse",
                  "mug", "projector")
    HOW_TO = ("follow FedBN's README (github.com/med-air/FedBN): download office_caltech_10 with its split pickles so "
              "that <root>/office_caltech_10/<site>_{train,test}.pkl and the image paths they list exist")
    TEMPLATE = "a photo of a {}."
