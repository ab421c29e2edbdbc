"""UCF101 (middle frames) in CoOp's layout.

``ucf101/UCF-101-midframes/<Action_Name>/*.jpg`` + ``ucf101/split_zhou_UCF101.json``.

Without the split file, the split is generated from ``ucfTrainTestlist/classInd.txt``, ``trainlist01.txt``
and ``testlist01.txt``, with 20% of each class's training videos as val, as CoOp does; the action
``ApplyEyeMakeup`` becomes the folder and class name ``Apply_Eye_Makeup`` and ``x.avi`` becomes ``x.jpg``.
"""
from __future__ import annotations

import os
import random
import re

from dassl.data.datasets import CUSTOM_TEMPLATES, DATASET_REGISTRY
from federated.errors import DataError

from .coop_base import CoOpDataset, Entry, read_text_lines, split_trainval


def split_camel(action: str) -> str:
    """``ApplyEyeMakeup`` -> ``Apply_Eye_Makeup``."""
    return "_".join(re.findall("[A-Z][^A-Z]*", action)) or action


@DATASET_REGISTRY.register()
class UCF101(CoOpDataset):
    dataset_dir = "ucf101"
    image_dir = "UCF-101-midframes"
    split_file = "split_zhou_UCF101.json"
    NUM_CLASSES = 101
    REQUIRED = (("UCF-101-midframes/", "the middle frame of every video, one folder per action"),)
    HOW_TO = ("download UCF-101-midframes.zip (CoOp's DATASETS.md link), extract it into ucf101/, and put "
              "split_zhou_UCF101.json there")
    TEMPLATE = CUSTOM_TEMPLATES["UCF101"]

    def generate_split(self, seed: int) -> tuple[list[Entry], list[Entry], list[Entry]]:
        lists = "ucfTrainTestlist"
        self.need_annotations([f"{lists}/classInd.txt", f"{lists}/trainlist01.txt", f"{lists}/testlist01.txt"])
        lab = {}
        for line in read_text_lines(os.path.join(self.dataset_dir_abs, lists, "classInd.txt")):
            idx, action = line.split()
            lab[action] = int(idx) - 1

        def read(name: str) -> list[Entry]:
            path = os.path.join(self.dataset_dir_abs, lists, name)
            out = []
            for line in read_text_lines(path):
                action, filename = line.split(" ")[0].split("/")
                if action not in lab:
                    raise DataError(f"{path}: action '{action}' is not in classInd.txt")
                renamed = split_camel(action)
                out.append((f"{renamed}/{filename.replace('.avi', '.jpg')}", lab[action], renamed))
            return out

        train, val = split_trainval(read("trainlist01.txt"), 0.2, random.Random(seed))
        return train, val, read("testlist01.txt")
