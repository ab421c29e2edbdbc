"""From a config and a ``DatasetBase`` to what every client holds.

``build_federated_data(cfg)`` applies the base/novel class protocol (``DATASET.SUBSAMPLE_CLASSES``)
and the client partition (``DATASET.PARTITION``), and keeps the evaluation sets of base-to-novel
runs: every base-class test image ("base") and every novel-class test image ("novel").
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from dassl.data.datasets import DATASET_REGISTRY, DatasetBase, Datum, build_dataset
from federated import partition as P


class DataError(ValueError):
    """The data cannot be prepared as configured; the message says how to fix it."""


@dataclass
class FederatedData:
    """The clients' data and the global evaluation sets.

    ``train[i]`` / ``test[i]`` are client i's train and local test items, labelled in the space of
    ``classnames``. ``base_test`` / ``novel_test`` (with their class names) exist in base-to-novel runs.
    """

    dataset_name: str
    classnames: list[str]
    train: list[list[Datum]]
    test: list[list[Datum]]
    client_classes: list[list[int]] = field(default_factory=list)
    base_classnames: list[str] | None = None
    base_test: list[Datum] | None = None
    novel_classnames: list[str] | None = None
    novel_test: list[Datum] | None = None
    template: str = "a photo of a {}."

    @property
    def num_users(self) -> int:
        return len(self.train)

    def summary(self) -> str:
        sizes = [len(t) for t in self.train]
        lines = [
            f"dataset {self.dataset_name}: {len(self.classnames)} classes, {self.num_users} clients, "
            f"train items per client {sizes}, local test items per client {[len(t) for t in self.test]}"
        ]
        if self.base_test is not None:
            lines.append(f"base: {len(self.base_classnames)} classes, {len(self.base_test)} test items")
        if self.novel_test is not None:
            lines.append(f"novel: {len(self.novel_classnames)} classes, {len(self.novel_test)} test items")
        return "\n".join(lines)


def load_dataset(cfg) -> DatasetBase:
    """Build ``cfg.DATASET.NAME`` with a clear error when its data root is missing."""
    name = cfg.DATASET.NAME
    if name not in DATASET_REGISTRY:
        raise DataError(f"unknown dataset '{name}'; registered: {', '.join(DATASET_REGISTRY.registered_names())}")
    cls = DATASET_REGISTRY.get(name)
    if getattr(cls, "REQUIRES_ROOT", True):
        root = os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT))
        if not os.path.isdir(root):
            raise DataError(
                f"data root {root} does not exist: create it and put the {name} data there in the layout of "
                f"docs/DATASETS.md (CoOp's DATA/ layout), or pass --root PATH"
            )
    return build_dataset(cfg)


def _partition(cfg, train: list[Datum], test: list[Datum]):
    users = int(cfg.DATASET.USERS)
    if users < 1:
        raise DataError(f"--num-users must be at least 1, got {users}")
    try:
        kind = P.canonical_partition(cfg.DATASET.PARTITION)
    except ValueError as err:
        raise DataError(str(err)) from None
    seed = int(cfg.DATASET.SPLIT_SEED)
    shots = int(cfg.DATASET.NUM_SHOTS)
    if kind == "pathological":
        try:
            clients_train, classes = P.pathological_split(train, users, shots, seed=seed)
        except ValueError as err:
            raise DataError(str(err)) from None
        return clients_train, P.split_by_classes(test, classes), classes
    try:
        if kind == "dirichlet":
            clients_train, clients_test = P.dirichlet_split(train, users, float(cfg.DATASET.BETA), seed, test=test,
                                                            num_shots=shots)
        elif kind == "iid":
            clients_train, clients_test = P.iid_split(train, users, seed, num_shots=shots, test=test)
        elif kind == "domain":
            clients_train, clients_test = P.split_by_domain(train), P.split_by_domain(test)
        else:
            raise DataError(f"partition '{kind}' needs dataset-specific information, not available for "
                            f"{cfg.DATASET.NAME}")
    except ValueError as err:
        raise DataError(str(err)) from None
    classes = [sorted({d.label for d in c}) for c in clients_train]
    return clients_train, clients_test, classes


def build_federated_data(cfg, dataset: DatasetBase | None = None, partition: bool = True) -> FederatedData:
    """Split ``dataset`` (built from ``cfg`` when None) into clients as ``cfg.DATASET`` says.

    With ``partition=False`` (``--eval-only`` on ``--subsample new``) the clients get no data of their
    own: only the global evaluation sets are prepared, for ``DATASET.USERS`` saved clients.
    """
    dataset = dataset if dataset is not None else load_dataset(cfg)
    subsample = cfg.DATASET.SUBSAMPLE_CLASSES
    classnames_all = list(dataset.classnames)
    try:
        classnames = P.subsample_classnames(classnames_all, subsample)
        train, test = P.subsample_classes(dataset.train_x, dataset.test, subsample=subsample)
    except ValueError as err:
        raise DataError(str(err)) from None
    if partition:
        clients_train, clients_test, classes = _partition(cfg, train, test)
    else:
        users = int(cfg.DATASET.USERS)
        clients_train, clients_test, classes = [[] for _ in range(users)], [[] for _ in range(users)], []
    empty = [i for i, t in enumerate(clients_train) if not t]
    if empty and partition:
        raise DataError(f"clients {empty} received no training data: use fewer --num-users")
    data = FederatedData(cfg.DATASET.NAME, classnames, clients_train, clients_test, classes)
    if subsample != "all" and cfg.FED.EVAL_BASE_NOVEL:
        (data.base_test,) = P.subsample_classes(dataset.test, subsample="base")
        (data.novel_test,) = P.subsample_classes(dataset.test, subsample="new")
        data.base_classnames = P.subsample_classnames(classnames_all, "base")
        data.novel_classnames = P.subsample_classnames(classnames_all, "new")
    from trainers.zsclip import dataset_template

    data.template = dataset_template(cfg)
    return data
