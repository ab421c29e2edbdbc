"""EuroSAT (RGB) in CoOp's layout: ``eurosat/2750/<class>/*.jpg`` + ``split_zhou_EuroSAT.json``.

Class names are CoOp's descriptive names (``AnnualCrop`` -> "Annual Crop Land", ...).
"""
from __future__ import annotations

from dassl.data.datasets import CUSTOM_TEMPLATES, DATASET_REGISTRY

from .coop_base import CoOpDataset


@DATASET_REGISTRY.register()
class EuroSAT(CoOpDataset):
    dataset_dir = "eurosat"
    image_dir = "2750"
    split_file = "split_zhou_EuroSAT.json"
    NUM_CLASSES = 10
    NEW_CNAMES = {
        "AnnualCrop": "Annual Crop Land", "Forest": "Forest", "HerbaceousVegetation": "Herbaceous Vegetation Land",
        "Highway": "Highway or Road", "Industrial": "Industrial Buildings", "Pasture": "Pasture Land",
        "PermanentCrop": "Permanent Crop Land", "Residential": "Residential Buildings", "River": "River",
        "SeaLake": "Sea or Lake",
    }
    REQUIRED = (("2750/", "one folder of images per land-use class"),)
    HOW_TO = ("download EuroSAT.zip (RGB), extract it into eurosat/ (giving eurosat/2750/), and put "
              "split_zhou_EuroSAT.json (CoOp's DATASETS.md) in eurosat/")
    TEMPLATE = CUSTOM_TEMPLATES["EuroSAT"]
