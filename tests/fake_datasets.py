"""Writers of tiny fake datasets in the real on-disk layouts (for the loader tests).

Images are small solid-colour squares (class-dependent colour plus noise), so that a short run can
learn something, written as real JPEG/PNG files with the real folder and file names.
"""
from __future__ import annotations

import gzip
import json
import os
import pickle
import struct

import numpy as np
from PIL import Image

PET_BREEDS = [
    "Abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "Bengal", "Birman",
    "Bombay", "boxer", "British_Shorthair", "chihuahua", "Egyptian_Mau", "english_cocker_spaniel", "english_setter",
    "german_shorthaired", "great_pyrenees", "havanese", "japanese_chin", "keeshond", "leonberger", "Maine_Coon",
    "miniature_pinscher", "newfoundland", "Persian", "pomeranian", "pug", "Ragdoll", "Russian_Blue", "saint_bernard",
    "samoyed", "scottish_terrier", "shiba_inu", "Siamese", "Sphynx", "staffordshire_bull_terrier", "wheaten_terrier",
    "yorkshire_terrier",
]


def colour_image(label: int, k: int, size: int = 12, seed: int = 0) -> np.ndarray:
    """``(size, size, 3)`` uint8: a class colour (label-dependent) with a little per-image noise."""
    rng = np.random.default_rng(seed * 100003 + label * 1009 + k)
    base = np.array([(label * 67) % 256, (label * 151 + 80) % 256, (label * 29 + 160) % 256], dtype=np.float64)
    img = base[None, None, :] + rng.normal(0, 12, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_image(path: str, label: int, k: int, size: int = 12) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(colour_image(label, k, size)).save(path)


def class_folders(image_dir: str, names: list[str], per_class: int, ext: str = ".jpg") -> None:
    """``image_dir/<name>/<name>_<k>.jpg`` for every class name."""
    for y, name in enumerate(names):
        for k in range(per_class):
            write_image(os.path.join(image_dir, name, f"{name}_{k:04d}{ext}"), y, k)


def oxford_pets(root: str, per_class: int = 3, breeds: list[str] | None = None, with_split: bool = True) -> str:
    """``oxford_pets/images/<Breed>_<k>.jpg``, ``annotations/{trainval,test}.txt`` and optionally the split json."""
    base = os.path.join(root, "oxford_pets")
    breeds = breeds or PET_BREEDS
    trainval, test, split = [], [], {"train": [], "val": [], "test": []}
    for y, breed in enumerate(breeds):
        for k in range(per_class):
            name = f"{breed}_{k + 1}"
            write_image(os.path.join(base, "images", f"{name}.jpg"), y, k)
            line = f"{name} {y + 1} {1 if breed[0].isupper() else 2} {k + 1}"
            entry = [f"{name}.jpg", y, breed.lower()]
            if k == per_class - 1:
                test.append(line)
                split["test"].append(entry)
            else:
                trainval.append(line)
                split["val" if k == 0 and per_class > 2 else "train"].append(entry)
    os.makedirs(os.path.join(base, "annotations"), exist_ok=True)
    for name, lines in (("trainval.txt", trainval), ("test.txt", test)):
        with open(os.path.join(base, "annotations", name), "w") as f:
            f.write("#Image CLASS-ID SPECIES BREED ID\n" + "\n".join(lines) + "\n")
    if with_split:
        with open(os.path.join(base, "split_zhou_OxfordPets.json"), "w") as f:
            json.dump(split, f)
    return base


def cifar(root: str, hundred: bool, per_class: int = 4, num_classes: int | None = None) -> str:
    """torchvision's CIFAR python pickles with ``per_class`` train and test images per class."""
    n = num_classes or (100 if hundred else 10)
    folder = os.path.join(root, "cifar-100-python" if hundred else "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)

    def batch(k0: int) -> dict:
        labels = [y for y in range(n) for _ in range(per_class)]
        data = np.stack([colour_image(y, k0 + i % per_class, 32).transpose(2, 0, 1).reshape(-1)
                         for i, y in enumerate(labels)])
        if hundred:
            return {b"data": data, b"fine_labels": labels, b"coarse_labels": [y // 5 for y in labels]}
        return {b"data": data, b"labels": labels}

    def dump(name: str, obj) -> None:
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(obj, f)

    if hundred:
        dump("train", batch(0))
        dump("test", batch(100))
        dump("meta", {b"fine_label_names": [f"fine_{i}".encode() for i in range(n)],
                      b"coarse_label_names": [f"coarse_{i}".encode() for i in range((n + 4) // 5)]})
    else:
        for i in range(1, 6):
            dump(f"data_batch_{i}", batch(10 * i))
        dump("test_batch", batch(100))
        dump("batches.meta", {b"label_names": [f"class_{i}".encode() for i in range(n)]})
    return folder


def idx_file(path: str, array: np.ndarray) -> None:
    """Write an unsigned-byte IDX file (gzipped when ``path`` ends in ``.gz``)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with opener(path, "wb") as f:
        f.write(data)


def fedbn_domains(root: str, dataset_dir: str, sites: list[str], classnames: list[str], per_class: int = 3,
                  text_labels: bool = True) -> str:
    """FedBN pickles ``<dataset_dir>/<site>_{train,test}.pkl`` holding (paths relative to root, labels)."""
    base = os.path.join(root, dataset_dir)
    for d, site in enumerate(sites):
        for split, n in (("train", per_class), ("test", max(1, per_class // 2))):
            paths, labels = [], []
            for y, name in enumerate(classnames):
                for k in range(n):
                    rel = f"{dataset_dir}/{site}/{name}/{split}_{k}.jpg"
                    write_image(os.path.join(root, rel), y, k + 50 * d + (0 if split == "train" else 20))
                    paths.append(rel)
                    labels.append(name if text_labels else y)
            with open(os.path.join(base, f"{site}_{split}.pkl"), "wb") as f:
                pickle.dump((np.array(paths), np.array(labels)), f)
    return base
