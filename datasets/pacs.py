"""PACS (4 domains, 7 classes) in the FedBN pickle layout (``PACS/<site>_{train,test}.pkl``), as FLORA prepares it."""
from __future__ import annotations

from dassl.data.datasets import DATASET_REGISTRY

from .fedbn_domains import FedBNDomainDataset


@DATASET_REGISTRY.register()
class PACS(FedBNDomainDataset):
    dataset_dir = "PACS"
    SITES = ("art_painting", "cartoon", "photo", "sketch")
    CLASSNAMES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")
    HOW_TO = ("download PACS (kfold/ image folders) and write <root>/PACS/<site>_{train,test}.pkl, each holding "
              "(image paths relative to <root>, class names), e.g. with a per-domain 80/20 split (docs/DATASETS.md)")
    TEMPLATE = "a photo of a {}."
