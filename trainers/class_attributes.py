"""Class attribute phrases (LLM-written descriptions, as FedMVP ships them) and the sentences built from them
(with the trainers: only FedMVP's classifier reads them, and a trainer imports nothing above ``trainers/``).

File format (``docs/DATASETS.md``, "Class attributes"): ``<DATASET.ROOT>/attributes/<key>.json`` is one JSON
object mapping each class name (underscores written as spaces) to a list of short attribute phrases, e.g.
``{"banded": ["alternating stripes of colour", "a regular pattern", ...], ...}``. ``<key>`` is the
dataset's entry of :data:`ATTRIBUTE_FILES` (FedMVP's file names). Every class of the run must be present;
an empty list gives the class one sentence without attribute.

Sentences: ``"<prefix> <class>, <suffix><which-clause>"`` with the per-dataset prefix and suffix of
:data:`DESCRIPTION_STYLE` (e.g. "a photo of a banded, a type of texture, which has ...") and the clause
chosen by the phrase's first word as FedMVP does: a phrase starting with the letter "a" -> "which is
<phrase>" (so also "antlers ..."), with "has", "often", "typically", "may" or "can" -> "which <phrase>",
with "used" -> "which is <phrase>", otherwise "which has <phrase>".

The toy world has no LLM: its dataset class writes four phrases per class from the words of its name
(pattern, colour, shape; ``ToyWorld.class_attributes``); a file under the root, if present, is used instead.
"""
from __future__ import annotations

import json
import os

from federated.errors import DataError

#: dataset name -> the attribute file's stem (FedMVP's ``attributes/*.json``)
ATTRIBUTE_FILES = {
    "Caltech101": "caltech101", "DescribableTextures": "dtd", "EuroSAT": "eurosat", "FGVCAircraft": "fgvc_aircraft",
    "Food101": "food101", "ImageNet": "imagenet", "OxfordFlowers": "oxford_flowers", "OxfordPets": "oxford_pets",
    "StanfordCars": "stanford_cars", "SUN397": "sun397", "UCF101": "ucf101", "PACS": "pacs",
    "OfficeHome": "officehome", "DomainNet": "domainnet", "ToyWorld": "toyworld",
}
#: dataset name -> (prefix, suffix) of its description sentences (FedMVP's table; default "a photo of a", "")
DESCRIPTION_STYLE = {
    "OxfordFlowers": ("a photo of a", "a type of flower, "), "FGVCAircraft": ("a photo of a", "a type of aircraft, "),
    "UCF101": ("a photo of a person doing", ""), "OxfordPets": ("a photo of a", "a type of pet, "),
    "Food101": ("a photo of a", "a type of food, "), "DescribableTextures": ("a photo of a", "a type of texture, "),
}
#: (dataset, domain) -> prefix of the domain datasets (FedMVP's table); ToyWorld styles: "a <style> of a"
DOMAIN_PREFIX = {
    ("PACS", "art_painting"): "an art painting of a", ("PACS", "cartoon"): "a cartoon of a",
    ("PACS", "photo"): "a photo of a", ("PACS", "sketch"): "a sketch of a",
    ("OfficeHome", "art"): "an art of a", ("OfficeHome", "clipart"): "a clipart of a",
    ("OfficeHome", "product"): "a product image of a", ("OfficeHome", "real_world"): "a realworld image of a",
    ("DomainNet", "clipart"): "a clipart of a", ("DomainNet", "infograph"): "an infograph of a",
    ("DomainNet", "painting"): "a painting of a", ("DomainNet", "quickdraw"): "a quickdraw image of a",
    ("DomainNet", "real"): "a real image of a", ("DomainNet", "sketch"): "a sketch of a",
}


def which_clause(phrase: str) -> str:
    """FedMVP's clause for an attribute phrase (module docstring)."""
    if phrase.startswith("a"):
        return f"which is {phrase}"
    if phrase.startswith(("has", "often", "typically", "may", "can")):
        return f"which {phrase}"
    if phrase.startswith("used"):
        return f"which is {phrase}"
    return f"which has {phrase}"


def description_sentences(classname: str, phrases: list[str], prefix: str = "a photo of a",
                          suffix: str = "") -> list[str]:
    """The class's sentences, one per phrase (one without attribute when ``phrases`` is empty)."""
    name = classname.replace("_", " ")
    if not phrases:
        return [f"{prefix} {name}."]
    return [f"{prefix} {name}, {suffix}{which_clause(p)}" for p in phrases]


def description_style(dataset: str, domain: str = "") -> tuple[str, str]:
    """``(prefix, suffix)`` for ``dataset`` (and a domain of a multi-domain dataset: its own prefix)."""
    prefix, suffix = DESCRIPTION_STYLE.get(dataset, ("a photo of a", ""))
    if domain:
        key = (dataset, domain.lower())
        if key in DOMAIN_PREFIX:
            prefix = DOMAIN_PREFIX[key]
        elif dataset == "ToyWorld":
            prefix = f"{'an' if domain[:1].lower() in 'aeiou' else 'a'} {domain.lower()} of a"
    return prefix, suffix


def generated_attributes(dataset: str, classnames: list[str]) -> dict[str, list[str]] | None:
    """The attributes a dataset generates itself (its registered class's ``class_attributes(classnames)``,
    e.g. the toy world's, written from the words of its class names), None when it has none."""
    from dassl.data import DATASET_REGISTRY

    if dataset not in DATASET_REGISTRY.registered_names():
        return None
    make = getattr(DATASET_REGISTRY.get(dataset), "class_attributes", None)
    return None if make is None else make(classnames)


def attribute_path(root: str, dataset: str) -> str:
    """Where the attribute file of ``dataset`` is looked for."""
    stem = ATTRIBUTE_FILES.get(dataset, dataset.lower())
    return os.path.join(os.path.abspath(os.path.expanduser(root)), "attributes", f"{stem}.json")


def load_attributes(path: str, classnames: list[str]) -> dict[str, list[str]]:
    """``{class name: phrases}`` for ``classnames`` from the JSON file ``path`` (DataError: unreadable, not the
    format, or a class missing)."""
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read the class attribute file {path}: {err}") from None
    if not isinstance(raw, dict) or not all(isinstance(v, list) and all(isinstance(p, str) for p in v)
                                            for v in raw.values()):
        raise DataError(f"{path} must be a JSON object mapping each class name to a list of attribute phrases "
                        f"(docs/DATASETS.md)")
    missing = [n for n in classnames if n.replace("_", " ") not in raw and n not in raw]
    if missing:
        raise DataError(f"{path} has no attributes for {len(missing)} classes, e.g. {missing[:3]}")
    return {n: list(raw.get(n.replace("_", " "), raw.get(n))) for n in classnames}


def class_attributes(root: str, dataset: str, classnames: list[str]) -> dict[str, list[str]]:
    """The attributes of ``classnames``: the dataset's file under ``root``, or the toy world's generated ones."""
    path = attribute_path(root, dataset)
    if os.path.isfile(path):
        return load_attributes(path, classnames)
    generated = generated_attributes(dataset, classnames)
    if generated is None:
        raise DataError(f"FedMVP needs class attributes: {path} does not exist (format: docs/DATASETS.md, "
                        f"'Class attributes'; FedMVP's repository ships the files)")
    return generated
