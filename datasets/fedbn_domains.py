"""The FedBN pickle layout of the multi-domain datasets (DomainNet, Office-Caltech10, OfficeHome, PACS).

``<root>/<dataset_dir>/<site>_train.pkl`` and ``<site>_test.pkl``, one pair per domain ("site"). Each
pickle holds ``(paths, labels)`` (a 2-tuple or 2-list, as FedBN writes them with ``np.save``/``pickle``;
a dict with keys ``paths`` and ``labels`` is accepted too):

* ``paths``: image paths relative to the data root (FedBN: ``DomainNet/clipart/bird/clipart_001.jpg``)
  or absolute;
* ``labels``: class names (FedBN's "text labels", e.g. ``"ice_cream"``) or integer labels.

Labels are indices into the dataset's fixed ``CLASSNAMES`` list (label order, written out in each
module), never into a Python set: the published code builds the class list from a set, so the
prompt <-> label mapping changes with ``PYTHONHASHSEED``. ``Datum.domain`` is the site's index in
``SITES``; ``self.domains`` lists the site names.
"""
from __future__ import annotations

import os

import numpy as np

from dassl.data.datasets import Datum
from federated.errors import DataError

from .common import RealDataset, dataset_root
from .safe_pickle import load_data_pickle


def read_pickle(path: str) -> tuple[list, list]:
    """``(paths, labels)`` of one FedBN pickle (plain data and numpy arrays only: ``datasets/safe_pickle.py``)."""
    raw = load_data_pickle(path)
    if isinstance(raw, dict) and {"paths", "labels"} <= set(raw):
        paths, labels = raw["paths"], raw["labels"]
    elif isinstance(raw, (tuple, list, np.ndarray)) and len(raw) == 2:
        paths, labels = raw
    else:
        raise DataError(f"{path} does not hold (paths, labels): got {type(raw).__name__}")
    try:
        paths, labels = list(paths), list(labels)
    except TypeError:
        raise DataError(f"{path} does not hold (paths, labels) lists: got {type(paths).__name__} and "
                        f"{type(labels).__name__}") from None
    if len(paths) != len(labels):
        raise DataError(f"{path}: {len(paths)} paths but {len(labels)} labels")
    return [str(p) for p in paths], labels


class FedBNDomainDataset(RealDataset):
    """Subclasses set ``dataset_dir``, ``SITES`` (domain order) and ``CLASSNAMES`` (label order)."""

    SITES: tuple[str, ...] = ()
    CLASSNAMES: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.REQUIRED = tuple((cls.site_file(s, sp), f"{s} {sp} split") for s in cls.SITES for sp in ("train", "test"))

    @staticmethod
    def site_file(site: str, split: str) -> str:
        return f"{site}_{split}.pkl"

    def __init__(self, cfg):
        root = dataset_root(cfg)
        self.check(root)
        self.domains = list(self.SITES)
        index = {n.lower(): i for i, n in enumerate(self.CLASSNAMES)}
        splits: dict[str, list[Datum]] = {"train": [], "test": []}
        for d, site in enumerate(self.SITES):
            for split in splits:
                path = os.path.join(root, self.dataset_dir, self.site_file(site, split))
                paths, labels = read_pickle(path)
                missing = []
                for p, lab in zip(paths, labels, strict=True):
                    label = self._label(lab, index, path)
                    impath = p if os.path.isabs(p) else os.path.join(root, p)
                    if not os.path.isfile(impath):
                        missing.append(impath)
                    splits[split].append(Datum(impath=impath, label=label, domain=d, classname=self.CLASSNAMES[label]))
                if missing:
                    raise DataError(f"{path} names {len(missing)} image(s) that do not exist, e.g. {missing[:3]}; "
                                    f"paths in the pickle are read relative to the data root {root}")
        self.finish(cfg, splits["train"], [], splits["test"], list(self.CLASSNAMES),
                    os.path.join(root, self.dataset_dir))

    def _label(self, lab, index: dict[str, int], path: str) -> int:
        if isinstance(lab, str):
            key = lab.lower()
            if key not in index:
                raise DataError(f"{path}: class '{lab}' is not one of the {len(self.CLASSNAMES)} classes of "
                                f"{type(self).__name__}: {', '.join(self.CLASSNAMES)}")
            return index[key]
        try:
            label = int(lab)
        except (TypeError, ValueError):
            raise DataError(f"{path}: label {lab!r} is neither a class name nor an integer") from None
        if not 0 <= label < len(self.CLASSNAMES):
            raise DataError(f"{path}: label {label} is outside 0..{len(self.CLASSNAMES) - 1}")
        return label
