"""Tiny-ImageNet-200 in its standard layout: ``tiny-imagenet-200/{wnids.txt,words.txt,train/,val/}``.

``train/<wnid>/images/*.JPEG`` are the train images; ``val/images/*.JPEG`` with
``val/val_annotations.txt`` (``<file>\\t<wnid>\\t...``) are the test images (the official test split has
no labels). Labels follow the sorted wnids of ``wnids.txt``; a class name is the first synonym in
``words.txt`` (``n01443537\\tgoldfish, Carassius auratus`` -> "goldfish").
"""
from __future__ import annotations

import os

from dassl.data.datasets import DATASET_REGISTRY, Datum
from federated.errors import DataError

from .common import IMAGE_EXTENSIONS, RealDataset, dataset_root
from .coop_base import read_text_lines


@DATASET_REGISTRY.register()
class TinyImageNet(RealDataset):
    dataset_dir = "tiny-imagenet-200"
    NUM_CLASSES = 200
    REQUIRED = (
        ("wnids.txt", "the 200 wnids"),
        ("words.txt", "wnid -> names"),
        ("train/", "train/<wnid>/images/*.JPEG"),
        ("val/images/", "validation images"),
        ("val/val_annotations.txt", "validation labels"),
    )
    HOW_TO = ("download tiny-imagenet-200.zip (http://cs231n.stanford.edu/tiny-imagenet-200.zip) and extract it in "
              "the data root")
    TEMPLATE = "a photo of a {}."

    def __init__(self, cfg):
        root = dataset_root(cfg)
        self.check(root)
        base = os.path.join(root, self.dataset_dir)
        wnids = sorted(read_text_lines(os.path.join(base, "wnids.txt")))
        words = {}
        for line in read_text_lines(os.path.join(base, "words.txt")):
            wnid, _, names = line.partition("\t")
            words[wnid] = names.split(",")[0].strip()
        unnamed = [w for w in wnids if w not in words]
        if unnamed:
            raise DataError(f"{base}/words.txt has no name for {unnamed[:5]}")
        if cfg.DATASET.CHECK_NUM_CLASSES and len(wnids) != self.NUM_CLASSES:
            raise DataError(f"TinyImageNet: {base}/wnids.txt lists {len(wnids)} classes, the dataset has "
                            f"{self.NUM_CLASSES} (set DATASET.CHECK_NUM_CLASSES False to use a subset on purpose)")
        label = {w: i for i, w in enumerate(wnids)}
        classnames = [words[w] for w in wnids]
        train = []
        for w in wnids:
            folder = os.path.join(base, "train", w, "images")
            if not os.path.isdir(folder):
                raise DataError(f"TinyImageNet: {folder} is missing (train images of class {w})")
            train += [Datum(impath=os.path.join(folder, f), label=label[w], classname=words[w])
                      for f in sorted(os.listdir(folder)) if f.lower().endswith(IMAGE_EXTENSIONS)]
        test = []
        anno = os.path.join(base, "val", "val_annotations.txt")
        for line in read_text_lines(anno):
            parts = line.split("\t")
            if len(parts) < 2 or parts[1] not in label:
                raise DataError(f"{anno}: line {line!r} does not name an image and one of the wnids of wnids.txt")
            impath = os.path.join(base, "val", "images", parts[0])
            if not os.path.isfile(impath):
                raise DataError(f"{anno} names {impath}, which does not exist")
            test.append(Datum(impath=impath, label=label[parts[1]], classname=words[parts[1]]))
        self.finish(cfg, train, [], test, classnames, base)
