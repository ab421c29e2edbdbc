"""The CoOp data layout: ``DATA/<dataset_dir>/<image_dir>/...`` plus a ``split_zhou_<Name>.json``.

:class:`CoOpDataset` reads the split file (CoOp's format, see ``datasets/common.py``). When the
split file is absent it builds a deterministic split from what the folder holds (the dataset's own
annotation files, or one sub-folder per class) with ``random.Random(DATASET.SPLIT_SEED)`` and saves it
next to the data, as CoOp does (CoOp seeds the global RNG with the run seed instead; the published
split files are what every paper uses, so prefer them). ``DATASET.COOP_FEWSHOT`` applies CoOp's
dataset-level few-shot subset, cached in ``split_fewshot/shot_{K}-seed_{S}.pkl``.
"""
from __future__ import annotations

import logging
import os
import random
from collections import defaultdict
from collections.abc import Sequence

from dassl.data.datasets import Datum
from federated.errors import DataError

from .common import (
    DatasetFilesMissing,
    RealDataset,
    dataset_root,
    fewshot_cached,
    read_split,
    split_per_class,
    write_split,
)

logger = logging.getLogger("fedtv")

Entry = tuple[str, int, str]  # (path relative to the image folder, label, class name)


def split_trainval(trainval: Sequence[Entry], p_val: float, rng: random.Random) -> tuple[list[Entry], list[Entry]]:
    """CoOp's ``split_trainval``: per label (ascending), shuffle and move ``round(n * p_val)`` items to val."""
    by_label: dict[int, list[Entry]] = defaultdict(list)
    for e in trainval:
        by_label[e[1]].append(e)
    train, val = [], []
    for label in sorted(by_label):
        items = list(by_label[label])
        rng.shuffle(items)
        n_val = round(len(items) * p_val)
        val += items[:n_val]
        train += items[n_val:]
    return train, val


def classnames_in_label_order(splits: dict[str, list[Datum]], source: str) -> list[str]:
    """Class names indexed by label, read off the items; every label 0..n-1 must have one name.

    Raises:
        DataError: a label carries two names, or some label in 0..max has no item.
    """
    names: dict[int, str] = {}
    for items in splits.values():
        for d in items:
            if d.label < 0:
                raise DataError(f"{source}: negative label {d.label} for {d.impath}")
            if names.setdefault(d.label, d.classname) != d.classname:
                raise DataError(f"{source}: label {d.label} is named both '{names[d.label]}' and '{d.classname}'")
    if not names:
        raise DataError(f"{source} holds no item")
    gaps = [y for y in range(max(names) + 1) if y not in names]
    if gaps:
        raise DataError(f"{source}: labels {gaps[:10]} have no item, so those classes cannot be named")
    return [names[y] for y in range(len(names))]


class CoOpDataset(RealDataset):
    """A dataset in CoOp's ``DATA/`` layout (subclasses set the class attributes below).

    * ``image_dir``: image folder relative to ``dataset_dir`` ("" = ``dataset_dir`` itself);
    * ``split_file``: ``split_zhou_<Name>.json`` in ``dataset_dir``;
    * ``NUM_CLASSES``: the class count of the full dataset (checked unless
      ``DATASET.CHECK_NUM_CLASSES`` is False);
    * ``P_TRN`` / ``P_VAL`` / ``IGNORED`` / ``NEW_CNAMES``: the one-folder-per-class split generation
      (override :meth:`generate_split` for datasets with their own annotation files).
    """

    image_dir = "images"
    split_file = ""
    NUM_CLASSES = 0
    P_TRN, P_VAL = 0.5, 0.2
    IGNORED: tuple[str, ...] = ()
    NEW_CNAMES: dict[str, str] = {}

    def __init__(self, cfg):
        root = dataset_root(cfg)
        self.check(root)
        self.dataset_dir_abs = os.path.join(root, self.dataset_dir)
        self.image_dir_abs = os.path.join(self.dataset_dir_abs, self.image_dir)
        self.split_path = os.path.join(self.dataset_dir_abs, self.split_file)
        seed = int(cfg.DATASET.SPLIT_SEED)
        splits = self.load_splits(seed)
        source = self.split_path if self.split_file else self.dataset_dir_abs
        classnames = classnames_in_label_order(splits, source)
        self.check_class_count(classnames, cfg, source)
        train, val, test = splits["train"], splits["val"], splits["test"]
        shots = int(cfg.DATASET.NUM_SHOTS)
        if cfg.DATASET.COOP_FEWSHOT and shots >= 1:
            run_seed = int(cfg.SEED)
            sub = fewshot_cached(
                os.path.join(self.dataset_dir_abs, "split_fewshot"), shots, run_seed,
                lambda: {"train": self.generate_fewshot_dataset(train, num_shots=shots, seed=run_seed),
                         "val": self.generate_fewshot_dataset(val, num_shots=min(shots, 4), seed=run_seed)},
            )
            train, val = sub["train"], sub["val"]
            self.coop_fewshot_applied = True  # federated.data.fewshot_pool draws no second subset
        self.finish(cfg, train, val, test, classnames, source)

    def check_class_count(self, classnames: list[str], cfg, source: str) -> None:
        if self.NUM_CLASSES and cfg.DATASET.CHECK_NUM_CLASSES and len(classnames) != self.NUM_CLASSES:
            raise DataError(
                f"{type(self).__name__}: {source} gives {len(classnames)} classes, the dataset has {self.NUM_CLASSES}: "
                f"the folder is incomplete or holds another dataset (set DATASET.CHECK_NUM_CLASSES False to use a "
                f"subset on purpose)"
            )

    def load_splits(self, seed: int) -> dict[str, list[Datum]]:
        """Read the split file, generating and saving it first when it is absent."""
        if not os.path.isfile(self.split_path):
            train, val, test = self.generate_split(seed)
            write_split(self.split_path, train, val, test)
            logger.info("%s: no %s; generated a split (seed %d) and saved it there", type(self).__name__,
                        self.split_path, seed)
        return read_split(self.split_path, self.image_dir_abs)

    def generate_split(self, seed: int) -> tuple[list[Entry], list[Entry], list[Entry]]:
        """Default: one sub-folder of images per class in ``image_dir`` (CoOp's ``read_and_split_data``)."""
        return split_per_class(self.image_dir_abs, self.P_TRN, self.P_VAL, self.IGNORED, self.NEW_CNAMES, seed)

    def need_annotations(self, paths: Sequence[str]) -> None:
        """Raise when the annotation files needed to generate a missing split file are absent."""
        missing = [p for p in paths if not os.path.exists(os.path.join(self.dataset_dir_abs, p))]
        if missing:
            root = os.path.dirname(self.dataset_dir_abs.rstrip("/"))
            raise DatasetFilesMissing(self.missing_message(root, [
                f"{self.split_path} (the split file; download {self.split_file} from CoOp's DATASETS.md links)",
                *(f"{os.path.join(self.dataset_dir_abs, p)} (needed to generate a split without the split file)"
                  for p in missing),
            ]))


def read_text_lines(path: str) -> list[str]:
    """Non-empty, stripped lines of a text annotation file, with a clear error when it is unreadable."""
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip() and not line.startswith("#")]
    except OSError as err:
        raise DataError(f"cannot read {path}: {err}") from None
