"""The hand-crafted zero-shot prompt of each dataset (``{}`` is the class name): CoOp's table, a
dataset class's own ``TEMPLATE``, and ``dataset_template(cfg)``, the one a run uses."""

from __future__ import annotations

import re

#: The default template, for any dataset without its own.
DEFAULT_TEMPLATE = "a photo of a {}."

#: CoOp's ``CUSTOM_TEMPLATES``: Dassl dataset class name -> template.
CUSTOM_TEMPLATES: dict[str, str] = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_BY_KEY = {_key(k): v for k, v in CUSTOM_TEMPLATES.items()}


def template_for(dataset_name: str) -> str:
    """The zero-shot template for a dataset (``"OxfordPets"``, also ``"oxford_pets"``); the default otherwise."""
    if dataset_name in CUSTOM_TEMPLATES:
        return CUSTOM_TEMPLATES[dataset_name]
    return _BY_KEY.get(_key(dataset_name), DEFAULT_TEMPLATE)


def dataset_template(cfg) -> str:
    """The zero-shot template of ``cfg.DATASET.NAME``: ``TRAINER.ZSCLIP.TEMPLATE`` when set, else the
    registered dataset class's ``TEMPLATE``, else CoOp's table (:func:`template_for`)."""
    from .build import DATASET_REGISTRY

    override = cfg.TRAINER.ZSCLIP.TEMPLATE if "ZSCLIP" in cfg.TRAINER else ""
    if override:
        return override
    name = cfg.DATASET.NAME
    if name in DATASET_REGISTRY:
        own = getattr(DATASET_REGISTRY.get(name), "TEMPLATE", None)
        if own:
            return own
    return template_for(name)
