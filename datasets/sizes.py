"""Sizes of the real datasets (images per split), for estimating run times without the data.

``dataset_size(NAME)`` gives the class count and the train / test image counts of a registered
dataset (``DATASET.NAME``), and for the multi-domain datasets the counts per domain (site). The class
count comes from the dataset class itself (``NUM_CLASSES`` or ``CLASSNAMES``, or the module's
``CLASSNAMES``); only datasets that read their class names from their files (CIFAR) state it here.

Sources of the image counts (``SIZES``; "val" images are not used for training by the protocols):

* the eleven CoOp datasets: CoOp's dataset table (Zhou et al., IJCV 2022, ``DATASETS.md``: train / val /
  test of the ``split_zhou_*`` files; ImageNet: train / val-as-test);
* CIFAR-10 / CIFAR-100 (50,000 / 10,000), Fashion-MNIST (60,000 / 10,000), Tiny-ImageNet (100,000 train /
  10,000 labelled val used as test): the official releases;
* Office-Caltech10, OfficeHome, PACS: the official image count of each domain (Office-Caltech10: amazon
  958, caltech 1,123, dslr 157, webcam 295; OfficeHome: Art 2,427, Clipart 4,365, Product 4,439,
  Real_World 4,357; PACS: art_painting 2,048, cartoon 2,344, photo 1,670, sketch 3,929), split 80 / 20
  into train / test -- **the split ratio is an assumption** (the FedBN pickles a user writes decide it);
* DomainNet (FedBN's 10-class subset): **assumed** round counts per domain (the subset's sizes are not
  stated in the seeds); replace them with the counts of your pickles for a closer estimate.

``exact`` says whether the numbers are the dataset's published counts.

Prompt suffix length (``DatasetSize.suffix``, used by the text-tower cost of ``tools/gpu_time.py``): a
CoOp-style prompt ``[SOS] context [CLASS] . [EOS]`` is encoded up to its last EOS, and every class's suffix
is padded to the longest one, so ``suffix = longest class name in CLIP BPE tokens + 2`` ('.' and EOS).
It is **computed** from the class names where the code has them (the dataset class's ``CLASSNAMES``, the
toy world's names, CIFAR-10's ten names below); for the datasets that read their names from files it is
an **assumption** (``NAME_TOKENS``: the longest name's tokens as we expect them, e.g. Stanford Cars' "2012
Chevrolet Silverado 1500 Extended Cab" is 12 tokens); ``suffix_exact`` says which.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DatasetSize:
    """Class count and images per split; ``domains``: site -> (train, test) for multi-domain datasets."""

    name: str
    classes: int
    train: int
    test: int
    domains: dict[str, tuple[int, int]] = field(default_factory=dict)
    exact: bool = True
    suffix: int = 0  # prompt suffix tokens after the context: longest class name + '.' + EOS
    suffix_exact: bool = True  # computed from the class names (else NAME_TOKENS' assumption)


def _split80(total: int) -> tuple[int, int]:
    train = round(total * 0.8)
    return train, total - train


#: DATASET.NAME -> {"train", "test"} or {"domains": {site: (train, test)}}; "classes" only where the class
#: has no constant; "exact": False where the counts are assumptions (see the module docstring).
SIZES: dict[str, dict] = {
    "OxfordPets": {"train": 2944, "test": 3669},
    "OxfordFlowers": {"train": 4093, "test": 2463},
    "Caltech101": {"train": 4128, "test": 2465},
    "Food101": {"train": 50500, "test": 30300},
    "DescribableTextures": {"train": 2820, "test": 1692},
    "ImageNet": {"train": 1281167, "test": 50000},
    "SUN397": {"train": 15880, "test": 19850},
    "StanfordCars": {"train": 6509, "test": 8041},
    "FGVCAircraft": {"train": 3334, "test": 3333},
    "EuroSAT": {"train": 13500, "test": 8100},
    "UCF101": {"train": 7639, "test": 3783},
    "CIFAR10": {"classes": 10, "train": 50000, "test": 10000},
    "CIFAR100": {"classes": 100, "train": 50000, "test": 10000},
    "FashionMNIST": {"train": 60000, "test": 10000},
    "TinyImageNet": {"train": 100000, "test": 10000},
    "Office": {"domains": {s: _split80(n) for s, n in
                           (("amazon", 958), ("caltech", 1123), ("dslr", 157), ("webcam", 295))}, "exact": False},
    "OfficeHome": {"domains": {s: _split80(n) for s, n in
                               (("Art", 2427), ("Clipart", 4365), ("Product", 4439), ("Real_World", 4357))},
                   "exact": False},
    "PACS": {"domains": {s: _split80(n) for s, n in
                         (("art_painting", 2048), ("cartoon", 2344), ("photo", 1670), ("sketch", 3929))},
             "exact": False},
    "DomainNet": {"domains": {s: _split80(n) for s, n in
                              (("clipart", 1600), ("infograph", 2400), ("painting", 2200), ("quickdraw", 5000),
                               ("real", 5200), ("sketch", 2200))}, "exact": False},
}


#: ASSUMPTION: the longest class name of the datasets whose names live in their files, in CLIP BPE tokens
#: (without '.' and EOS); an estimate from the names' typical shape, not a count.
NAME_TOKENS: dict[str, int] = {
    "OxfordPets": 5, "OxfordFlowers": 6, "Caltech101": 4, "Food101": 5, "DescribableTextures": 3,
    "ImageNet": 8, "SUN397": 6, "StanfordCars": 14, "FGVCAircraft": 6, "EuroSAT": 5, "UCF101": 6,
    "CIFAR100": 3, "TinyImageNet": 8,
}
#: CIFAR-10's class names (its batches.meta), so that its suffix is computed.
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def suffix_length(classnames) -> int:
    """Tokens after the context of the longest ``"<name>."`` prompt: its BPE tokens (name and '.') + EOS."""
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = SimpleTokenizer()
    return max(len(tokenizer.encode(f"{n.replace('_', ' ')}.")) for n in classnames) + 1


def _classnames_in_code(name: str) -> list[str]:
    """The class names the code holds for dataset ``name`` ([] when they are read from its files)."""
    import datasets  # noqa: F401  (registers the datasets)
    from dassl.data.datasets import DATASET_REGISTRY

    if name == "CIFAR10":
        return list(CIFAR10_NAMES)
    cls = DATASET_REGISTRY.get(name)
    return list(getattr(cls, "CLASSNAMES", ()) or getattr(sys.modules[cls.__module__], "CLASSNAMES", ()) or ())


def class_count(name: str) -> int:
    """Classes of the registered dataset ``name`` (its ``NUM_CLASSES`` / ``CLASSNAMES``, else ``SIZES``)."""
    import datasets  # noqa: F401  (registers the datasets)
    from dassl.data.datasets import DATASET_REGISTRY

    if name not in DATASET_REGISTRY.registered_names():
        raise KeyError(f"no dataset '{name}'; registered: {', '.join(sorted(DATASET_REGISTRY.registered_names()))}")
    cls = DATASET_REGISTRY.get(name)
    n = getattr(cls, "NUM_CLASSES", 0) or len(getattr(cls, "CLASSNAMES", ()) or ())
    n = n or len(getattr(sys.modules[cls.__module__], "CLASSNAMES", ()) or ())
    n = n or int(SIZES.get(name, {}).get("classes", 0))
    if not n:
        raise KeyError(f"dataset '{name}' states no class count (NUM_CLASSES, CLASSNAMES or datasets.sizes.SIZES)")
    return n


def dataset_size(name: str) -> DatasetSize:
    """The :class:`DatasetSize` of ``DATASET.NAME`` ``name``; KeyError (naming the known ones) when unknown."""
    if name not in SIZES:
        raise KeyError(f"no image counts for dataset '{name}' in datasets/sizes.py; known: {', '.join(SIZES)}")
    entry = SIZES[name]
    domains = dict(entry.get("domains", {}))
    train = entry.get("train", sum(t for t, _ in domains.values()))
    test = entry.get("test", sum(t for _, t in domains.values()))
    names = _classnames_in_code(name)
    suffix = suffix_length(names) if names else NAME_TOKENS[name] + 2
    return DatasetSize(name, class_count(name), int(train), int(test), domains, bool(entry.get("exact", True)),
                       suffix, bool(names))
