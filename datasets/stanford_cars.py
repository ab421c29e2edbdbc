"""Stanford Cars in CoOp's layout: ``stanford_cars/{cars_train,cars_test}/*.jpg`` + ``split_zhou_StanfordCars.json``.

Split-file paths are relative to ``stanford_cars/`` (``cars_train/00001.jpg``). Without the split file,
the split is generated from ``devkit/cars_meta.mat``, ``devkit/cars_train_annos.mat`` and
``cars_test_annos_withlabels.mat``, with 20% of each class's training images as val; class names put
the year first ("AM General Hummer SUV 2000" -> "2000 AM General Hummer SUV"), as CoOp does.
"""
from __future__ import annotations

import os
import random

from dassl.data.datasets import CUSTOM_TEMPLATES, DATASET_REGISTRY
from federated.errors import DataError

from .coop_base import CoOpDataset, Entry, split_trainval


def year_first(name: str) -> str:
    words = name.split(" ")
    return " ".join([words[-1], *words[:-1]])


@DATASET_REGISTRY.register()
class StanfordCars(CoOpDataset):
    dataset_dir = "stanford_cars"
    image_dir = ""
    split_file = "split_zhou_StanfordCars.json"
    NUM_CLASSES = 196
    REQUIRED = (("cars_train/", "training images"), ("cars_test/", "test images"))
    HOW_TO = ("download cars_train.tgz, cars_test.tgz, car_devkit.tgz and cars_test_annos_withlabels.mat into "
              "stanford_cars/ and extract them, and put split_zhou_StanfordCars.json (CoOp's DATASETS.md) there")
    TEMPLATE = CUSTOM_TEMPLATES["StanfordCars"]

    def generate_split(self, seed: int) -> tuple[list[Entry], list[Entry], list[Entry]]:
        files = ["devkit/cars_meta.mat", "devkit/cars_train_annos.mat", "cars_test_annos_withlabels.mat"]
        self.need_annotations(files)
        from scipy.io import loadmat

        try:
            meta = loadmat(os.path.join(self.dataset_dir_abs, files[0]))["class_names"][0]
            names = [year_first(str(m[0])) for m in meta]

            def read(anno: str, folder: str) -> list[Entry]:
                out = []
                for a in loadmat(os.path.join(self.dataset_dir_abs, anno))["annotations"][0]:
                    label = int(a["class"][0, 0]) - 1
                    out.append((f"{folder}/{a['fname'][0]}", label, names[label]))
                return out

            trainval, test = read(files[1], "cars_train"), read(files[2], "cars_test")
        except (OSError, ValueError, KeyError, IndexError) as err:
            raise DataError(f"cannot read the Stanford Cars annotations in {self.dataset_dir_abs}: {err}") from None
        train, val = split_trainval(trainval, 0.2, random.Random(seed))
        return train, val, test
