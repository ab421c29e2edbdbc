"""Shared pieces of the real-dataset loaders: missing-file checks, split files, few-shot cache.

Every real dataset class derives from :class:`RealDataset`. It declares what must exist under its
folder (``REQUIRED``: relative path, what it is) and how to get it (``HOW_TO``); the same check
drives the loader's error message and ``python -m tools.check_data``.

Split files use CoOp's format: a json object ``{"train": [...], "val": [...], "test": [...]}`` whose
entries are ``[image path relative to the image folder, label, class name]``.
"""
from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Sequence

from dassl.data.datasets import DatasetBase, Datum
from dassl.utils.atomic import atomic_write_bytes
from federated.errors import DataError

__all__ = [
    "DatasetFilesMissing",
    "RealDataset",
    "add_dataset_keys",
    "atomic_write_bytes",
    "check_labels",
    "dataset_root",
    "fewshot_cached",
    "list_class_folders",
    "read_split",
    "split_per_class",
    "write_split",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class DatasetFilesMissing(DataError):
    """A dataset folder is incomplete; the message lists what is missing and how to prepare it."""


def add_dataset_keys(cfg) -> None:
    """Keys of the real-dataset loaders (``extend_cfg`` hook of every :class:`RealDataset`)."""
    # CoOp's dataset-level few-shot subset (train: NUM_SHOTS per class, val: min(NUM_SHOTS, 4)),
    # sampled with cfg.SEED and cached in split_fewshot/, in every protocol; for centralised CoOp
    # reproduction (--num-users 1). Base-to-novel federated runs draw the same subset without it
    # (DATASET.FEWSHOT_POOL "coop", federated/data.py).
    cfg.DATASET.COOP_FEWSHOT = False
    # CIFAR-10/100: download with torchvision when the files are absent (needs network access).
    cfg.DATASET.DOWNLOAD = True
    # Stop when a dataset does not have its published number of classes (an incomplete folder);
    # False lets a deliberate subset through.
    cfg.DATASET.CHECK_NUM_CLASSES = True
    # Keep only the first N test images of each class (0 = all): quick evaluations, smoke tests.
    cfg.DATASET.MAX_TEST_PER_CLASS = 0


def dataset_root(cfg) -> str:
    """The absolute data root ``cfg.DATASET.ROOT``."""
    return os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT))


def list_class_folders(image_dir: str, ignored: Sequence[str] = ()) -> list[str]:
    """Sorted names of the sub-folders of ``image_dir`` (hidden and ``ignored`` names left out)."""
    return sorted(
        n for n in os.listdir(image_dir)
        if not n.startswith(".") and n not in ignored and os.path.isdir(os.path.join(image_dir, n))
    )


def _list_images(folder: str) -> list[str]:
    return sorted(n for n in os.listdir(folder) if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS))


def split_per_class(
    image_dir: str, p_trn: float = 0.5, p_val: float = 0.2, ignored: Sequence[str] = (),
    new_cnames: dict[str, str] | None = None, seed: int = 1,
) -> tuple[list[tuple[str, int, str]], list[tuple[str, int, str]], list[tuple[str, int, str]]]:
    """CoOp's ``read_and_split_data``: one class per sub-folder of ``image_dir``, split per class.

    Labels follow the sorted folder names. For each class the (sorted) image names are shuffled with
    ``random.Random(seed)`` (one generator, classes in label order); ``round(n * p_trn)`` go to train,
    ``round(n * p_val)`` to val, the rest to test. Class names are the folder names with ``_``
    replaced by a space, or ``new_cnames[folder]``.

    Returns:
        ``(train, val, test)`` lists of ``(path relative to image_dir, label, class name)``.

    Raises:
        DatasetFilesMissing: no class folder, or a class too small to have a test image.
    """
    rng = random.Random(seed)
    categories = list_class_folders(image_dir, ignored)
    if not categories:
        raise DatasetFilesMissing(f"{image_dir} holds no class sub-folder (one folder of images per class expected)")
    train, val, test = [], [], []
    for label, category in enumerate(categories):
        images = _list_images(os.path.join(image_dir, category))
        rng.shuffle(images)
        n_train, n_val = round(len(images) * p_trn), round(len(images) * p_val)
        if len(images) - n_train - n_val <= 0:
            raise DatasetFilesMissing(
                f"class folder {os.path.join(image_dir, category)} has {len(images)} images: too few for a "
                f"train/val/test split (need at least 1 test image)"
            )
        name = (new_cnames or {}).get(category, category.replace("_", " "))
        entries = [(f"{category}/{im}", label, name) for im in images]
        train += entries[:n_train]
        val += entries[n_train:n_train + n_val]
        test += entries[n_train + n_val:]
    return train, val, test


def write_split(path: str, train: Sequence, val: Sequence, test: Sequence) -> None:
    """Save ``(relative path, label, class name)`` lists as a CoOp split json (atomically)."""
    payload = {k: [[str(p), int(y), str(c)] for p, y, c in v] for k, v in (("train", train), ("val", val),
                                                                           ("test", test))}
    atomic_write_bytes(path, json.dumps(payload, indent=1).encode())


def read_split(path: str, image_dir: str, check_files: bool = True) -> dict[str, list[Datum]]:
    """Read a CoOp split json into ``{"train", "val", "test"}`` lists of ``Datum`` (image paths absolute).

    Raises:
        DataError: unreadable json, a malformed entry, or (``check_files``) entries naming images that
            do not exist (the message names the first ones and the split file).
    """
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read the split file {path}: {err}") from None
    out: dict[str, list[Datum]] = {}
    missing: list[str] = []
    for split in ("train", "val", "test"):
        items = []
        for entry in raw.get(split, []):
            try:
                rel, label, classname = entry
                label = int(label)
            except (TypeError, ValueError):
                raise DataError(
                    f"{path}: malformed {split} entry {entry!r}; expected [path, label, classname]"
                ) from None
            impath = os.path.join(image_dir, rel)
            if check_files and not os.path.isfile(impath):
                missing.append(impath)
            items.append(Datum(impath=impath, label=label, classname=classname))
        out[split] = items
    if missing:
        raise DataError(
            f"the split file {path} names {len(missing)} image(s) that do not exist, e.g. {missing[:3]}; "
            f"the image folder {image_dir} is incomplete (re-extract the archive) or the split file belongs to "
            f"another copy of the dataset (delete it to regenerate a split from the images present)"
        )
    return out


def check_labels(items: Sequence[Datum], classnames: Sequence[str], source: str) -> None:
    """Every label must index ``classnames``.

    Raises:
        DataError: naming ``source`` and the first offending item.
    """
    bad = [d for d in items if not 0 <= d.label < len(classnames)]
    if bad:
        raise DataError(
            f"{source}: {len(bad)} item(s) have labels outside 0..{len(classnames) - 1} (the {len(classnames)} "
            f"classes), e.g. {bad[0].impath} with label {bad[0].label}"
        )


def _fewshot_entries(items: Sequence[Datum], base: str) -> list[list]:
    """``[path, label, domain, classname]`` per item; paths under ``base`` are stored relative to it."""
    out = []
    for d in items:
        rel = os.path.relpath(d.impath, base)
        out.append([d.impath if rel.startswith("..") or os.path.isabs(rel) else rel, d.label, d.domain, d.classname])
    return out


def _fewshot_items(entries, base: str, path: str) -> list[Datum]:
    items = []
    for entry in entries:
        try:
            impath, label, domain, classname = entry
            if not isinstance(impath, str) or not isinstance(classname, str):
                raise TypeError
            items.append(Datum(impath=os.path.join(base, impath), label=int(label), domain=int(domain),
                               classname=classname))
        except (TypeError, ValueError):
            raise DataError(f"the few-shot cache {path} has a malformed entry {entry!r} "
                            f"(expected [path, label, domain, classname]); delete it to rebuild it") from None
    return items


def fewshot_cached(folder: str, num_shots: int, seed: int, make: Callable[[], dict]) -> dict:
    """Load ``folder/shot_{num_shots}-seed_{seed}.json`` or build it with ``make()`` and save it atomically.

    ``make()`` returns ``{"train": [Datum], "val": [Datum]}``. The file is data only (json):
    ``{"format": 1, "num_shots": K, "seed": S, "train": [[path, label, domain, classname], ...], "val": [...]}``,
    paths relative to ``folder``'s parent (the dataset folder) when they lie under it. CoOp's pickle
    caches (``.pkl``) are never read: unpickling a file can run code.

    Raises:
        DataError: the cache is unreadable or malformed (the message says to delete it).
    """
    path = os.path.join(folder, f"shot_{num_shots}-seed_{seed}.json")
    base = os.path.dirname(os.path.abspath(folder))
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read the few-shot cache {path} ({err}); delete it to rebuild it") from None
        if not isinstance(raw, dict) or not all(isinstance(raw.get(k), list) for k in ("train", "val")):
            raise DataError(f"the few-shot cache {path} does not hold train and val lists; delete it to rebuild it")
        return {k: _fewshot_items(raw[k], base, path) for k in ("train", "val")}
    data = make()
    payload = {"format": 1, "num_shots": int(num_shots), "seed": int(seed),
               **{k: _fewshot_entries(data[k], base) for k in ("train", "val")}}
    atomic_write_bytes(path, json.dumps(payload).encode())
    return data


class RealDataset(DatasetBase):
    """Base of the datasets read from disk under ``cfg.DATASET.ROOT``.

    Class attributes a subclass sets:

    * ``dataset_dir``: its folder under the data root;
    * ``REQUIRED``: ``(relative path, description)`` pairs that must exist in ``dataset_dir`` (a
      trailing ``/`` means a folder);
    * ``HOW_TO``: how to prepare the folder (shown with every missing-file error);
    * ``TEMPLATE``: the hand-crafted zero-shot prompt.
    """

    REQUIRES_ROOT = True
    REQUIRED: tuple[tuple[str, str], ...] = ()
    HOW_TO = ""
    TEMPLATE = "a photo of a {}."
    extend_cfg = staticmethod(add_dataset_keys)

    def finish(self, cfg, train: list[Datum], val: list[Datum], test: list[Datum], classnames: list[str],
               source: str) -> None:
        """Check the labels against ``classnames``, apply ``DATASET.MAX_TEST_PER_CLASS``, fill the splits."""
        for items in (train, val, test):
            check_labels(items, classnames, source)
        limit = int(cfg.DATASET.MAX_TEST_PER_CLASS)
        if limit > 0:
            seen: dict[int, int] = {}
            kept = []
            for d in test:
                seen[d.label] = seen.get(d.label, 0) + 1
                if seen[d.label] <= limit:
                    kept.append(d)
            test = kept
        DatasetBase.__init__(self, train_x=train, val=val, test=test, classnames=classnames)

    @classmethod
    def missing(cls, root: str) -> list[str]:
        """Human-readable list of the required paths absent under ``root/dataset_dir``."""
        base = os.path.join(root, cls.dataset_dir)
        out = []
        for rel, what in cls.REQUIRED:
            path = os.path.join(base, rel)
            ok = os.path.isdir(path) if rel.endswith("/") else os.path.exists(path)
            if not ok:
                out.append(f"{path} ({what})")
        return out

    @classmethod
    def location(cls, root: str) -> str:
        """The folder the files are read from (``root/dataset_dir``; a dataset that also looks elsewhere
        says where it found them)."""
        return os.path.join(root, cls.dataset_dir)

    @classmethod
    def check(cls, root: str) -> None:
        """Raise :class:`DatasetFilesMissing` listing every missing path and the preparation steps."""
        missing = cls.missing(root)
        if missing:
            raise DatasetFilesMissing(cls.missing_message(root, missing))

    @classmethod
    def missing_message(cls, root: str, missing: list[str]) -> str:
        lines = "\n  ".join(missing)
        return (f"{cls.__name__}: the data under {os.path.join(root, cls.dataset_dir)} is incomplete; missing:\n  "
                f"{lines}\nHow to prepare it: {cls.HOW_TO}\n(see docs/DATASETS.md)")
