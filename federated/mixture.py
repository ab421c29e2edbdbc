"""Class-chunk clients over one dataset or a mixture of datasets (FedTPG's protocol), as pure functions.

``DATASET.PARTITION class-chunks`` (alias ``fedtpg``): the (base) classes of each dataset of
``DATASET.MIXTURE`` (``[]``: ``DATASET.NAME`` alone) are cut into consecutive chunks of
``DATASET.CLASSES_PER_CLIENT`` classes in label order, one client per chunk. A dataset of ``m`` classes
gives ``max(1, np.around(m / k))`` clients (numpy's round-half-to-even, as the published code; the
``max`` only matters below ``k / 2`` classes, where the published code would give the dataset no client)
and the last chunk takes the remainder. FedTPG's 9 datasets' base halves give 2 + 3 + 2 + 3 + 1 + 3 + 1 +
5 + 10 = 30 clients.

Each client has **its own label space**: its chunk's class names, labels ``0..k-1``. It trains with a
``k``-way classifier over its own classes and is tested on its dataset's test images of those classes
(a prompt conditioned on the class names, FedTPG, is then conditioned on exactly the client's names).
Every client's shots: ``NUM_SHOTS`` images per class, drawn per class in label order with
``random.Random(SEED)`` (the run seed, as the published per-class ``random.sample``; the exact draws
differ from the published code's).

Evaluation per dataset, then averaged over the datasets (as published): Local is each dataset's mean
over its clients, then the mean over datasets; Base / Novel are measured per dataset on all its base /
novel test images (a classifier over all its base / novel names), then averaged.

A mixture member is a registered dataset name, or ``Name/domain`` for one domain of a multi-domain
dataset (e.g. ``ToyWorld/sketch``: the toy world's miniature of the protocol, one "dataset" per
rendering style; ``DATASET.TOYWORLD.STYLES`` must list the styles used).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

from dassl.data.datasets import Datum


@dataclass
class Member:
    """One dataset of the mixture: its name, every class name (label order), train and test items, and its
    zero-shot template."""

    name: str
    classnames: list[str]
    train: list[Datum]
    test: list[Datum]
    template: str = "a photo of a {}."


@dataclass
class EvalSet:
    """An evaluation set: a results key, items labelled in ``classnames``, and the dataset it belongs to."""

    key: str
    items: list[Datum]
    classnames: list[str]
    group: str


@dataclass
class ChunkSplit:
    """Clients of the class-chunk partition (labels in each client's own space ``client_classnames[i]``)."""

    train: list[list[Datum]]
    test: list[list[Datum]]
    client_classnames: list[list[str]]
    client_groups: list[str]
    base: list[EvalSet]
    novel: list[EvalSet]


def parse_member(spec: str) -> tuple[str, str | None]:
    """``"Name"`` -> ``("Name", None)``; ``"Name/domain"`` -> ``("Name", "domain")``."""
    name, _, domain = str(spec).strip().partition("/")
    if not name or (_ and not domain):
        raise ValueError(f"DATASET.MIXTURE entry '{spec}' must be a dataset name or 'Name/domain'")
    return name, (domain or None)


def chunk_bounds(num_classes: int, per_client: int) -> list[tuple[int, int]]:
    """``[start, stop)`` label ranges of the clients of a dataset of ``num_classes`` classes (module docstring)."""
    if per_client < 1:
        raise ValueError(f"DATASET.CLASSES_PER_CLIENT must be >= 1, got {per_client}")
    if num_classes < 1:
        return []
    n = max(1, int(np.around(num_classes / per_client)))
    bounds = [(i * per_client, (i + 1) * per_client) for i in range(n - 1)]
    bounds.append(((n - 1) * per_client, num_classes))
    return [(a, b) for a, b in bounds if a < b]


def _relabel(items: list[Datum], classes: list[int]) -> list[Datum]:
    """Items of ``classes`` (global labels), relabelled to their position in ``classes`` (new ``Datum`` objects)."""
    index = {c: i for i, c in enumerate(classes)}
    return [d.copy(label=index[d.label]) for d in items if d.label in index]


def _shots(items: list[Datum], classes: list[int], shots: int, rng: random.Random) -> list[Datum]:
    """``shots`` items per class of ``classes`` (in that order), without replacement; all when fewer or ``shots<1``."""
    out: list[Datum] = []
    for c in classes:
        pool = [d for d in items if d.label == c]
        out.extend(rng.sample(pool, shots) if 0 < shots <= len(pool) else pool)
    return out


def class_chunk_split(members: list[Member], per_client: int, shots: int, seed: int, subsample: str = "base",
                      base_novel: bool = True) -> ChunkSplit:
    """The class-chunk clients of ``members`` and the per-dataset base / novel evaluation sets.

    ``subsample``: which classes of each member the clients get (``base``: the first ``ceil(m/2)``, ``new``:
    the rest, ``all``); base / novel sets are built when ``subsample != "all"`` and ``base_novel``.
    """
    if subsample not in ("base", "new", "all"):
        raise ValueError(f"subsample must be one of base, new, all; got {subsample!r}")
    rng = random.Random(seed)
    split = ChunkSplit([], [], [], [], [], [])
    for member in members:
        m = len(member.classnames)
        half = math.ceil(m / 2)
        own = {"base": range(half), "new": range(half, m), "all": range(m)}[subsample]
        labels = list(own)
        for a, b in chunk_bounds(len(labels), per_client):
            classes = labels[a:b]
            split.train.append(_relabel(_shots(member.train, classes, shots, rng), classes))
            split.test.append(_relabel(member.test, classes))
            split.client_classnames.append([member.classnames[c] for c in classes])
            split.client_groups.append(member.name)
        if subsample != "all" and base_novel:
            for kind, classes in (("base", list(range(half))), ("novel", list(range(half, m)))):
                if classes:
                    getattr(split, kind).append(EvalSet(f"{kind}:{member.name}", _relabel(member.test, classes),
                                                        [member.classnames[c] for c in classes], member.name))
    return split
