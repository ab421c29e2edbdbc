"""The client split as a file: ``OUTPUT_DIR/split.json`` is written by every run, ``DATASET.SPLIT_FILE``
(``--split-file``) loads one, so that other code (or another framework) can reuse the exact split.

Format (json)::

    {"format": 1, "dataset": "OxfordPets", "subsample": "base", "partition": "pathological",
     "split_seed": 2023, "target_domain": null, "classnames": [...],
     "clients": [{"train": [[impath, label], ...], "test": [[impath, label], ...],
                  "classes": [labels], "domain": "photo" or null}, ...]}

Labels are in the label space of ``classnames`` (after base/novel subsampling); with the class-chunks
partition each client also lists its own ``classnames``, the label space of its labels (such a split is
written, not read back). ``impath`` is the
dataset item's path (or its unique id for in-memory datasets, e.g. ``.../data_batch_1#17``), an item of
the dataset's train, val or test split (runs write train and test items; the shadow runs of
``tools/mia_shadow.py`` also train on val items).
"""
from __future__ import annotations

import json

from dassl.data.datasets import Datum
from federated.run_dir import write_text

__all__ = ["read_split_file", "write_split_file"]


def write_split_file(path: str, data, cfg) -> None:
    """Write ``data`` (a ``FederatedData``) as a split file at ``path`` (atomically)."""
    payload = {
        "format": 1,
        "dataset": data.dataset_name,
        "subsample": cfg.DATASET.SUBSAMPLE_CLASSES,
        "partition": cfg.DATASET.PARTITION,
        "split_seed": int(cfg.DATASET.SPLIT_SEED),
        "target_domain": data.target_domain,
        "classnames": list(data.classnames),
        "clients": [
            {
                "train": [[d.impath, d.label] for d in train],
                "test": [[d.impath, d.label] for d in test],
                "classes": [int(c) for c in (data.client_classes[i] if i < len(data.client_classes) else [])],
                "domain": data.client_domains[i] if data.client_domains else None,
                **({"classnames": data.client_classnames[i]} if data.client_classnames is not None else {}),
            }
            for i, (train, test) in enumerate(zip(data.train, data.test, strict=True))
        ],
    }
    write_text(path, json.dumps(payload))


def read_split_file(path: str, dataset_name: str, classnames: list[str], pool: list[Datum]) -> dict:
    """Rebuild the clients of a split file from the dataset's items ``pool`` (already subsampled).

    Returns:
        ``{"train": [[Datum]], "test": [[Datum]], "classes": [[int]], "domains": [str] | None,
        "target_domain": str | None}``.

    Raises:
        ValueError: unreadable file, another dataset or class list, or entries naming items that the
            dataset does not have (or with another label); the message names the file.
    """
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read the split file {path}: {err}") from None
    if raw.get("dataset") != dataset_name:
        raise ValueError(f"the split file {path} is for dataset {raw.get('dataset')!r}, this run uses {dataset_name!r}")
    if list(raw.get("classnames", [])) != list(classnames):
        raise ValueError(f"the split file {path} has another class list than this run (check --subsample and the "
                         f"dataset version): {len(raw.get('classnames', []))} vs {len(classnames)} classes")
    by_path = {d.impath: d for d in pool}
    out: dict = {"train": [], "test": [], "classes": [], "domains": [], "target_domain": raw.get("target_domain")}
    for i, client in enumerate(raw.get("clients", [])):
        for split in ("train", "test"):
            items = []
            for impath, label in client.get(split, []):
                item = by_path.get(impath)
                if item is None or item.label != int(label):
                    problem = "is not in the dataset" if item is None else f"has label {item.label}, not {label}"
                    raise ValueError(f"split file {path}, client {i} {split}: {impath} {problem}")
                items.append(item)
            out[split].append(items)
        out["classes"].append([int(c) for c in client.get("classes", [])])
        out["domains"].append(client.get("domain"))
    if not out["train"]:
        raise ValueError(f"the split file {path} lists no client")
    if all(d is None for d in out["domains"]):
        out["domains"] = None
    return out
