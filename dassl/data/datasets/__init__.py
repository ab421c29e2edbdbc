from .base_dataset import DatasetBase, Datum
from .build import DATASET_REGISTRY, build_dataset
from .templates import CUSTOM_TEMPLATES, DEFAULT_TEMPLATE, dataset_template, template_for

__all__ = ["CUSTOM_TEMPLATES", "DATASET_REGISTRY", "DEFAULT_TEMPLATE", "DatasetBase", "Datum", "build_dataset",
           "dataset_template", "template_for"]
