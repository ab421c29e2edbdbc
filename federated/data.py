"""From a config and a ``DatasetBase`` to what every client holds.

``build_federated_data(cfg)`` applies the base/novel class protocol (``DATASET.SUBSAMPLE_CLASSES``)
and the client partition (``DATASET.PARTITION``), and keeps the evaluation sets of base-to-novel
runs: every base-class test image ("base") and every novel-class test image ("novel").

Domain protocols (datasets with ``domains``, e.g. DomainNet, Office, PACS, multi-style ToyWorld):

* ``DATASET.PARTITION domain``: one client per domain; ``DATASET.SPLIT_CLIENT k`` splits each domain
  into ``k`` clients, IID or, with ``DATASET.IMBALANCE_TRAIN``, with Dirichlet(``BETA``) label skew
  (the published ``--split_client`` / ``--imbalance_train``). ``DATASET.USERS`` is then ignored:
  the client count is (number of training domains) x ``SPLIT_CLIENT``.
* ``DATASET.TARGET_DOMAIN name`` (``--target-domain``): leave-one-domain-out. The held-out domain's
  items never reach a client's training set; every client's local test set is the held-out domain's
  test split (plus its train split with ``DATASET.TARGET_USE_TRAIN``, as FedPGP's hard-coded
  DomainNet/Office variant did). Works with every partition of the remaining domains.

Few-shot pool of base-to-novel runs (``DATASET.FEWSHOT_POOL``): the published loaders (FedPGP / FedTV
``datasets/*.py``) first draw CoOp's K-shot subset of the whole train split (``generate_fewshot_dataset``:
per label in order of first appearance, K items without replacement, Python's ``random`` seeded with the
run seed), then split the base classes, then assign classes to clients with seed 2023 and draw K items of
each of a client's classes from that subset -- a reshuffle of the same K items. ``"coop"`` (default) does
exactly this whenever ``SUBSAMPLE_CLASSES`` is base or new, the partition is pathological and
``NUM_SHOTS >= 1``: the training images then depend on ``SEED``; ``"full"`` draws the K shots from the
whole train split (images independent of ``SEED``; what FedPGP's OxfordPets loader does, and what every
published loader does with ``SUBSAMPLE_CLASSES all``).

``DATASET.PARTITION hierarchical-dirichlet`` needs a dataset with ``coarse_of_fine`` (CIFAR-100).
Every run writes its split to ``OUTPUT_DIR/split.json`` (the coordinator, once the run is known to be
valid: ``federated/server.py``); ``DATASET.SPLIT_FILE`` loads one instead
of partitioning (``federated/split_file.py``; its items may come from the train, val or test split).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from dassl.data.datasets import DATASET_REGISTRY, DatasetBase, Datum, build_dataset, dataset_template
from federated import partition as P
from federated.errors import DataError
from federated.mixture import EvalSet, Member, class_chunk_split, parse_member

logger = logging.getLogger("fedtv")


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
    client_domains: list[str] | None = None  # domain name of each client (domain protocols; a mixture's datasets)
    target_domain: str | None = None  # the held-out domain of a leave-one-domain-out run
    #: each client's own label space (class-chunk partition, ``federated/mixture.py``); None: ``classnames``
    client_classnames: list[list[str]] | None = None
    #: per-dataset base / novel sets of a mixture (their mean is Base / Novel); None: ``base_test`` / ``novel_test``
    base_sets: list[EvalSet] | None = None
    novel_sets: list[EvalSet] | None = None
    #: zero-shot template of each dataset of a mixture (by ``client_domains`` / ``EvalSet.group`` name)
    group_templates: dict[str, str] | None = None

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
        if self.client_domains:
            lines.append(f"client domains {self.client_domains}")
        if self.target_domain is not None:
            lines.append(f"held-out domain '{self.target_domain}': every client is tested on it, none trains on it")
        return "\n".join(lines)

    def label_space(self, cid: int) -> list[str]:
        """The class names client ``cid``'s labels index (its own with the class-chunk partition)."""
        return self.client_classnames[cid] if self.client_classnames is not None else self.classnames

    def template_of(self, group: str | None) -> str:
        """The zero-shot template of a mixture's dataset ``group`` (the run's template otherwise)."""
        return (self.group_templates or {}).get(group, self.template)

    def eval_sets(self, split: str) -> list[EvalSet]:
        """The ``"base"`` or ``"novel"`` evaluation sets: one per dataset of a mixture, else the single one."""
        sets = self.base_sets if split == "base" else self.novel_sets
        if sets is not None:
            return sets
        items = self.base_test if split == "base" else self.novel_test
        names = self.base_classnames if split == "base" else self.novel_classnames
        return [EvalSet(split, items, names, self.dataset_name)] if items else []

    def local_mean(self, per_client: dict[int, float]) -> float | None:
        """Local accuracy of the run: the mean over clients; with a mixture, the mean over datasets of each
        dataset's mean over its clients (as FedTPG reports it)."""
        if not per_client:
            return None
        groups = self.per_domain(per_client) if self.client_classnames is not None else None
        values = list((groups or per_client).values())
        return float(sum(values) / len(values))

    def per_domain(self, per_client: dict[int, float]) -> dict[str, float] | None:
        """Mean of ``per_client`` values (client id -> accuracy) over the clients of each domain."""
        if not self.client_domains:
            return None
        groups: dict[str, list[float]] = {}
        for cid, value in per_client.items():
            groups.setdefault(self.client_domains[int(cid)], []).append(value)
        return {name: float(sum(v) / len(v)) for name, v in groups.items()}


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


def _partition(cfg, train: list[Datum], test: list[Datum], coarse_of_fine: list[int] | None = None):
    """``(clients_train, clients_test, clients_classes)`` of the non-domain partitions."""
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
        elif kind == "hierarchical-dirichlet":
            if coarse_of_fine is None:
                raise DataError(f"partition hierarchical-dirichlet needs coarse labels (CIFAR-100); "
                                f"{cfg.DATASET.NAME} has none: use --partition dirichlet")
            clients_train, clients_test = P.hierarchical_dirichlet_split(
                train, coarse_of_fine, users, float(cfg.DATASET.BETA), seed=seed, test=test)
        else:
            raise DataError(f"partition '{kind}' needs dataset-specific information, not available for "
                            f"{cfg.DATASET.NAME}")
    except ValueError as err:
        raise DataError(str(err)) from None
    classes = [sorted({d.label for d in c}) for c in clients_train]
    return clients_train, clients_test, classes


def resolve_domain(dataset: DatasetBase, name: str) -> int:
    """Index of domain ``name`` (a name, case-insensitive, or an index) in ``dataset.domains``."""
    domains = list(getattr(dataset, "domains", []) or [])
    if not domains:
        raise DataError(f"{type(dataset).__name__} has no domains: DATASET.TARGET_DOMAIN needs a multi-domain "
                        f"dataset (DomainNet, Office, OfficeHome, PACS, ToyWorld with several STYLES)")
    lowered = [d.lower() for d in domains]
    if str(name).lower() in lowered:
        return lowered.index(str(name).lower())
    if str(name).isdigit() and int(name) < len(domains):
        return int(name)
    raise DataError(f"--target-domain '{name}' is not a domain of {type(dataset).__name__}; "
                    f"choose one of {', '.join(domains)}")


def _domain_clients(cfg, train: list[Datum], test: list[Datum], domains: list[str]):
    """One client per domain, or ``SPLIT_CLIENT`` per domain (IID or Dirichlet label skew)."""
    per = int(cfg.DATASET.SPLIT_CLIENT)
    if per < 1:
        raise DataError(f"DATASET.SPLIT_CLIENT must be >= 1 (clients per domain), got {per}")
    present = sorted({d.domain for d in train})
    clients_train, clients_test, names = [], [], []
    seed = int(cfg.DATASET.SPLIT_SEED)
    shots = int(cfg.DATASET.NUM_SHOTS)
    for dom in present:
        dtrain = [d for d in train if d.domain == dom]
        dtest = [d for d in test if d.domain == dom]
        name = domains[dom] if dom < len(domains) else str(dom)
        try:
            if per == 1:
                parts_train = [P.iid_split(dtrain, 1, seed, num_shots=shots)[0][0]]
                parts_test = [dtest]
            elif cfg.DATASET.IMBALANCE_TRAIN:
                parts_train, parts_test = P.dirichlet_split(
                    dtrain, per, float(cfg.DATASET.BETA), seed + dom, min_size=min(10, len(dtrain) // per),
                    test=dtest, num_shots=shots)
            else:
                parts_train, parts_test = P.iid_split(dtrain, per, seed + dom, num_shots=shots, test=dtest)
        except ValueError as err:
            raise DataError(f"domain '{name}': {err}") from None
        clients_train += parts_train
        clients_test += parts_test
        names += [name] * per
    users = int(cfg.DATASET.USERS)
    if users != len(clients_train):
        logger.info("partition domain: %d domains x %d clients per domain = %d clients (DATASET.USERS=%d ignored)",
                    len(present), per, len(clients_train), users)
    classes = [sorted({d.label for d in c}) for c in clients_train]
    return clients_train, clients_test, classes, names


def build_federated_data(cfg, dataset: DatasetBase | None = None, partition: bool = True) -> FederatedData:
    """Split ``dataset`` (built from ``cfg`` when None) into clients as ``cfg.DATASET`` says.

    With ``partition=False`` (``--eval-only`` on ``--subsample new``) the clients get no data of their
    own: only the global evaluation sets are prepared, for ``DATASET.USERS`` saved clients.
    """
    if _partition_kind(cfg) == "class-chunks":
        return class_chunk_data(cfg, dataset, partition)
    dataset = dataset if dataset is not None else load_dataset(cfg)
    subsample = cfg.DATASET.SUBSAMPLE_CLASSES
    classnames_all = list(dataset.classnames)
    try:
        classnames = P.subsample_classnames(classnames_all, subsample)
        train, test = P.subsample_classes(fewshot_pool(cfg, dataset), dataset.test, subsample=subsample)
    except ValueError as err:
        raise DataError(str(err)) from None
    client_domains, target_name = None, None
    if cfg.DATASET.SPLIT_FILE and partition:
        from federated.split_file import read_split_file

        try:
            # a split file may also name validation items (the shadow runs of tools/mia_shadow.py train on them)
            (val,) = P.subsample_classes(dataset.val or [], subsample=subsample, num_classes=len(classnames_all))
            loaded = read_split_file(cfg.DATASET.SPLIT_FILE, cfg.DATASET.NAME, classnames, train + test + val)
        except ValueError as err:
            raise DataError(str(err)) from None
        clients_train, clients_test, classes = loaded["train"], loaded["test"], loaded["classes"]
        client_domains, target_name = loaded["domains"], loaded["target_domain"]
    elif partition:
        clients_train, clients_test, classes, client_domains, target_name = _split(cfg, dataset, train, test)
    else:
        users = int(cfg.DATASET.USERS)
        clients_train, clients_test, classes = [[] for _ in range(users)], [[] for _ in range(users)], []
    empty = [i for i, t in enumerate(clients_train) if not t]
    if empty and partition:
        raise DataError(f"clients {empty} received no training data: use fewer --num-users")
    data = FederatedData(cfg.DATASET.NAME, classnames, clients_train, clients_test, classes,
                         client_domains=client_domains, target_domain=target_name)
    if subsample != "all" and cfg.FED.EVAL_BASE_NOVEL:
        (data.base_test,) = P.subsample_classes(dataset.test, subsample="base")
        (data.novel_test,) = P.subsample_classes(dataset.test, subsample="new")
        data.base_classnames = P.subsample_classnames(classnames_all, "base")
        data.novel_classnames = P.subsample_classnames(classnames_all, "new")
    data.template = dataset_template(cfg)
    return data


def _partition_kind(cfg) -> str:
    try:
        return P.canonical_partition(cfg.DATASET.PARTITION)
    except ValueError as err:
        raise DataError(str(err)) from None


def mixture_members(cfg, dataset: DatasetBase | None = None) -> list[Member]:
    """The datasets of ``DATASET.MIXTURE`` (``[]``: ``DATASET.NAME``), each built once, restricted to a domain
    for ``Name/domain`` entries (``federated/mixture.py``)."""
    specs = [str(s) for s in cfg.DATASET.MIXTURE] or [str(cfg.DATASET.NAME)]
    if len(set(specs)) != len(specs):
        raise DataError(f"DATASET.MIXTURE lists a dataset twice: {specs}")
    built: dict[str, DatasetBase] = {}
    members = []
    for spec in specs:
        try:
            name, domain = parse_member(spec)
        except ValueError as err:
            raise DataError(str(err)) from None
        if name not in built:
            if dataset is not None and name == cfg.DATASET.NAME:
                built[name] = dataset
            else:
                member_cfg = cfg.clone()
                member_cfg.defrost()
                member_cfg.DATASET.NAME = name
                built[name] = load_dataset(member_cfg)
        ds = built[name]
        train, test = list(ds.train_x), list(ds.test)
        if domain is not None:
            d = resolve_domain(ds, domain)
            train, test = [x for x in train if x.domain == d], [x for x in test if x.domain == d]
            if not train or not test:
                raise DataError(f"DATASET.MIXTURE entry '{spec}' has no train or no test item")
        template_cfg = cfg.clone()
        template_cfg.defrost()
        template_cfg.DATASET.NAME = name
        members.append(Member(spec, list(ds.classnames), train, test, dataset_template(template_cfg)))
    return members


def class_chunk_data(cfg, dataset: DatasetBase | None = None, partition: bool = True) -> FederatedData:
    """The class-chunk partition of one dataset or a mixture (FedTPG's protocol, ``federated/mixture.py``)."""
    for key, value in (("SPLIT_FILE", cfg.DATASET.SPLIT_FILE), ("TARGET_DOMAIN", cfg.DATASET.TARGET_DOMAIN)):
        if value:
            raise DataError(f"DATASET.{key} is not supported with the class-chunks partition")
    members = mixture_members(cfg, dataset)
    try:
        split = class_chunk_split(members, int(cfg.DATASET.CLASSES_PER_CLIENT), int(cfg.DATASET.NUM_SHOTS),
                                  int(cfg.SEED), str(cfg.DATASET.SUBSAMPLE_CLASSES),
                                  bool(cfg.FED.EVAL_BASE_NOVEL))
    except ValueError as err:
        raise DataError(str(err)) from None
    if not partition:  # --eval-only: the saved clients keep their label spaces, but hold no data
        split.train = [[] for _ in split.train]
    name = "+".join(m.name for m in members) if len(members) > 1 else members[0].name
    data = FederatedData(name, list(split.client_classnames[0]), split.train, split.test,
                         [list(range(len(n))) for n in split.client_classnames], client_domains=split.client_groups,
                         client_classnames=split.client_classnames, base_sets=split.base, novel_sets=split.novel)
    data.template = members[0].template
    data.group_templates = {m.name: m.template for m in members}
    return data


FEWSHOT_POOLS = ("coop", "full")


def fewshot_pool(cfg, dataset: DatasetBase) -> list[Datum]:
    """The train items the partition draws from (``DATASET.FEWSHOT_POOL``, module docstring), all classes.

    ``"coop"`` in a base-to-novel pathological few-shot run: CoOp's ``NUM_SHOTS``-shot subset of
    ``dataset.train_x`` drawn with ``random.Random(SEED)`` (unless the dataset already applied it,
    ``DATASET.COOP_FEWSHOT``); otherwise ``dataset.train_x`` itself.
    """
    pool = str(cfg.DATASET.FEWSHOT_POOL)
    if pool not in FEWSHOT_POOLS:
        raise DataError(f"DATASET.FEWSHOT_POOL must be one of {', '.join(FEWSHOT_POOLS)}, got '{pool}'")
    shots = int(cfg.DATASET.NUM_SHOTS)
    try:
        pathological = P.canonical_partition(cfg.DATASET.PARTITION) == "pathological"
    except ValueError as err:
        raise DataError(str(err)) from None
    applies = (pool == "coop" and shots >= 1 and pathological and cfg.DATASET.SUBSAMPLE_CLASSES != "all"
               and not cfg.DATASET.SPLIT_FILE and not getattr(dataset, "coop_fewshot_applied", False))
    if not applies:
        return list(dataset.train_x)
    return dataset.generate_fewshot_dataset(list(dataset.train_x), num_shots=shots, seed=int(cfg.SEED))


def _split(cfg, dataset: DatasetBase, train: list[Datum], test: list[Datum]):
    """The configured partition, with the leave-one-domain-out protocol applied when ``TARGET_DOMAIN`` is set.

    Returns ``(clients_train, clients_test, clients_classes, client_domains or None, target name or None)``.
    """
    domains = list(getattr(dataset, "domains", []) or [])
    target_name, target_test = None, None
    if cfg.DATASET.TARGET_DOMAIN:
        t = resolve_domain(dataset, cfg.DATASET.TARGET_DOMAIN)
        target_name = domains[t]
        target_test = [d for d in test if d.domain == t]
        if cfg.DATASET.TARGET_USE_TRAIN:
            target_test = [d for d in train if d.domain == t] + target_test
        if not target_test:
            raise DataError(f"the held-out domain '{target_name}' has no test item")
        train = [d for d in train if d.domain != t]
        test = [d for d in test if d.domain != t]
    try:
        kind = P.canonical_partition(cfg.DATASET.PARTITION)
    except ValueError as err:
        raise DataError(str(err)) from None
    client_domains = None
    if kind == "domain":
        clients_train, clients_test, classes, client_domains = _domain_clients(cfg, train, test, domains)
    else:
        coarse = getattr(dataset, "coarse_of_fine", None)
        if coarse is not None:
            coarse = P.subsample_classnames(list(coarse), cfg.DATASET.SUBSAMPLE_CLASSES)
        clients_train, clients_test, classes = _partition(cfg, train, test, coarse)
    if target_test is not None:
        clients_test = [list(target_test) for _ in clients_train]
    return clients_train, clients_test, classes, client_domains, target_name
