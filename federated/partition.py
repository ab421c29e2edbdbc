"""Pure functions that split a dataset (lists of ``Datum``) into federated clients.

Every function is deterministic given its seed (it builds its own ``random.Random`` or
``np.random.default_rng``; the global RNGs are never touched) and never mutates its inputs: items
whose label changes are new ``Datum`` objects that share the ``image`` reference of the original.

Partitions (``PARTITIONS`` / ``canonical_partition`` resolve the published spellings):

* ``pathological``: disjoint classes per client, K shots per class (FedOTP/FedPGP/FedTV code).
* ``dirichlet``: per-class Dirichlet(beta) label skew with the published balancing rule.
* ``iid``: every client gets every class, items dealt evenly.
* ``hierarchical-dirichlet``: CIFAR-100 coarse/fine hierarchical Dirichlet ("noniid-labeldir100").
* ``domain``: one client per domain (plus ``leave_one_domain_out`` for the held-out-domain protocol).

Plus CoOp's base-to-novel class subsampling (``subsample_classes`` / ``subsample_classnames``).
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np

from dassl.data.datasets import Datum
from dassl.data.datasets.base_dataset import subsample_classes  # noqa: F401  (re-exported: the base/novel split)
from federated.names import PARTITIONS, SUBSAMPLE_CHOICES, canonical_partition  # noqa: F401  (re-exported)

__all__ = [
    "PARTITIONS",
    "SUBSAMPLE_CHOICES",
    "canonical_partition",
    "client_class_counts",
    "dirichlet_split",
    "hierarchical_dirichlet_split",
    "iid_split",
    "leave_one_domain_out",
    "pathological_split",
    "split_by_classes",
    "split_by_domain",
    "subsample_classes",
    "subsample_classnames",
]


# --------------------------------------------------------------------------------------------------
# helpers


def _indices_by_label(data: Sequence[Datum]) -> dict[int, list[int]]:
    """``{label: [positions of its items in data, in order]}``, labels in ascending order."""
    groups: dict[int, list[int]] = {}
    for i, item in enumerate(data):
        groups.setdefault(int(item.label), []).append(i)
    return dict(sorted(groups.items()))


def _check_users(num_users: int) -> None:
    if int(num_users) < 1:
        raise ValueError(f"--num-users must be at least 1, got {num_users}")


def _entries(data: Sequence[Datum], positions: Sequence[int]) -> list[Datum]:
    return [data[i] for i in positions]


# --------------------------------------------------------------------------------------------------
# base-to-novel (CoOp)


def _check_subsample(subsample: str) -> str:
    if subsample not in SUBSAMPLE_CHOICES:
        raise ValueError(f"subsample must be one of {', '.join(SUBSAMPLE_CHOICES)}; got {subsample!r}")
    return subsample


def subsample_classnames(classnames: list[str], subsample: str) -> list[str]:
    """The class names that ``subsample_classes`` keeps, in their new label order.

    ``classnames[i]`` names label ``i``; ``"base"`` -> the first ``ceil(n/2)`` names, ``"new"`` -> the
    rest, ``"all"`` -> a copy of all of them.

    Raises:
        ValueError: ``subsample`` is not one of ``all``, ``base``, ``new``.
    """
    _check_subsample(subsample)
    names = list(classnames)
    m = math.ceil(len(names) / 2)
    if subsample == "base":
        return names[:m]
    if subsample == "new":
        return names[m:]
    return names


# --------------------------------------------------------------------------------------------------
# pathological (disjoint classes, few-shot)


def _pathological_classes(classes: list[int], num_users: int, split: str) -> list[list[int]]:
    """Slices ``classes`` (already shuffled) into ``num_users`` groups as the published code does."""
    n_cls = len(classes)
    if num_users > n_cls:
        raise ValueError(
            f"--num-users {num_users} is larger than the {n_cls} classes of the {split} split allow with the "
            f"pathological partition; use at most {n_cls} users or --partition dirichlet/iid"
        )
    cpu = round(n_cls / num_users)
    groups = [classes[i * cpu:(i + 1) * cpu] for i in range(num_users - 1)]
    groups.append(classes[(num_users - 1) * cpu:])
    empty = [i for i, g in enumerate(groups) if not g]
    if empty:
        valid = [u for u in range(1, n_cls + 1) if (u - 1) * round(n_cls / u) < n_cls]
        near = sorted(valid, key=lambda u: (abs(u - num_users), u))[:3]
        raise ValueError(
            f"--num-users {num_users} does not fit the {n_cls} classes of the {split} split with the pathological "
            f"partition: round({n_cls}/{num_users}) = {cpu} classes per user leaves client(s) {empty} with no class; "
            f"use e.g. --num-users {' or '.join(str(u) for u in sorted(near))} or --partition dirichlet/iid"
        )
    return groups


def pathological_split(
    train: list[Datum], num_users: int, num_shots: int, seed: int = 2023
) -> tuple[list[list[Datum]], list[list[int]]]:
    """The published disjoint-class few-shot split (FedOTP / FedPGP / FedTV
    ``generate_federated_fewshot_dataset``).

    Procedure: the sorted list of the ``n_cls`` labels of ``train`` is shuffled with
    ``random.Random(seed)``; ``cpu = round(n_cls / num_users)`` (Python's round); client ``i`` gets the
    shuffled classes ``[i*cpu:(i+1)*cpu]`` and the last client every remaining class. Then, with the
    same generator, client by client, and for each client over ITS labels in the order in which labels
    first appear in ``train`` (the published per-label dictionary's order), ``num_shots`` items of the
    class are sampled without replacement whenever the class has at least ``num_shots`` items (exactly
    ``num_shots`` items are therefore reshuffled); all of them (input order, no draw) when
    ``num_shots <= 0`` or the class has fewer.

    The split depends on ``seed`` only, never on the run's ``--seed``: the published code resets
    ``random.seed(2023)`` inside, so every seed of a published run draws from its input with the same
    generator; we keep 2023 as the default and expose it as the split seed (``--split-seed``). (What
    the input is -- the full train split or CoOp's K-shot subset drawn with the run seed -- is
    ``federated.data``'s ``DATASET.FEWSHOT_POOL``.)

    Returns:
        ``(clients_train, clients_classes)``: ``num_users`` lists of items (grouped by class, classes in
        order of first appearance in ``train``) and ``num_users`` sorted lists of the client's labels
        (disjoint, their union is every label of ``train``). The items are the input objects (not copies).

    Raises:
        ValueError: ``num_users < 1``, ``train`` is empty, ``num_users > n_cls``, or the rounding
            leaves a client without classes; the message says which user counts work.
    """
    _check_users(num_users)
    by_label = _indices_by_label(train)
    if not by_label:
        raise ValueError("pathological_split: the train split is empty")
    rng = random.Random(seed)
    classes = list(by_label)
    rng.shuffle(classes)
    groups = _pathological_classes(classes, int(num_users), "train")
    appearance = list(dict.fromkeys(int(d.label) for d in train))
    clients: list[list[Datum]] = []
    for group in groups:
        members = set(group)
        items: list[Datum] = []
        for label in appearance:
            if label not in members:
                continue
            pos = by_label[label]
            if 0 < num_shots <= len(pos):
                pos = rng.sample(pos, num_shots)
            items.extend(_entries(train, pos))
        clients.append(items)
    return clients, [sorted(g) for g in groups]


def split_by_classes(data: list[Datum], client_classes: list[list[int]]) -> list[list[Datum]]:
    """Client ``i`` gets every item of ``data`` whose label is in ``client_classes[i]`` (input order).

    Used for the local test sets of the pathological partition. Classes may overlap between
    clients (then the item goes to each of them).
    """
    sets = [set(int(c) for c in classes) for classes in client_classes]
    return [[d for d in data if d.label in s] for s in sets]


# --------------------------------------------------------------------------------------------------
# Dirichlet label skew


def _cuts(proportions: np.ndarray, n: int) -> np.ndarray:
    """Cut points that split ``n`` items by ``proportions`` (sum 1): ``cumsum * n`` truncated."""
    return (np.cumsum(proportions) * n).astype(np.int64)[:-1]


def dirichlet_split(
    train: list[Datum],
    num_users: int,
    beta: float,
    seed: int,
    min_size: int = 10,
    test: list[Datum] | None = None,
    num_shots: int = -1,
    max_tries: int = 1000,
) -> tuple[list[list[Datum]], list[list[Datum]] | None]:
    """Per-class Dirichlet(beta) label skew ("noniid-labeldir" of the published CIFAR code).

    One attempt, with ``N = len(train)`` and ``rng = np.random.default_rng(seed)`` shared by all
    attempts; for each label (ascending, over the labels of ``train`` and ``test``):

    1. shuffle the class's train items; draw ``p ~ Dir(beta * 1_num_users)``;
    2. balancing rule of the published code: ``p_j = 0`` for every client ``j`` that has already been
       assigned ``>= N / num_users`` train items (counted before the shot cap); renormalise
       (uniform over the clients below the threshold if every remaining weight is 0);
    3. cut the class's items at ``floor(cumsum(p) * n_k)``: client ``j`` gets the j-th piece.

    When ``num_shots > 0`` each client then keeps at most ``num_shots`` items per class (a random
    subset). The attempt is accepted when every client has ``>= min_size`` train items (after the
    cap), else everything is redrawn; after ``max_tries`` attempts a ``ValueError`` suggests a larger
    beta or fewer users.

    When ``test`` is given, each class's test items (shuffled) are cut with the same final per-class
    proportions ``p`` as its train items (never capped), so a client's local test set follows its
    train label distribution.

    Returns:
        ``(clients_train, clients_test)``; ``clients_test`` is None when ``test`` is None. Each
        client's items are the input objects in input order. Without a shot cap every train item is
        in exactly one client (the same holds for test items always).

    Raises:
        ValueError: bad ``num_users``/``beta``, too little data, or no accepted attempt.
    """
    _check_users(num_users)
    num_users = int(num_users)
    if not beta > 0:
        raise ValueError(f"dirichlet_split: --beta must be > 0, got {beta}")
    n_total = len(train)
    by_label = _indices_by_label(train)
    test_by_label = _indices_by_label(test) if test is not None else {}
    labels = sorted(set(by_label) | set(test_by_label))
    if n_total < num_users * min_size:
        raise ValueError(
            f"dirichlet_split: {n_total} train items cannot give {num_users} users at least {min_size} items each; "
            f"use fewer --num-users"
        )
    if num_shots > 0 and len(by_label) * num_shots < min_size:
        raise ValueError(
            f"dirichlet_split: with {num_shots} shots per class and {len(by_label)} classes no client can reach "
            f"{min_size} train items; use more --num-shots"
        )
    rng = np.random.default_rng(seed)
    threshold = n_total / num_users
    for _ in range(max(1, int(max_tries))):
        parts: list[list[int]] = [[] for _ in range(num_users)]
        assigned = np.zeros(num_users, dtype=np.int64)  # before the shot cap: drives the balancing rule
        sizes = np.zeros(num_users, dtype=np.int64)  # kept items: checked against min_size
        props: dict[int, np.ndarray] = {}
        for label in labels:
            pos = np.asarray(by_label.get(label, []), dtype=np.int64)
            pos = pos[rng.permutation(len(pos))]
            p = rng.dirichlet(np.full(num_users, float(beta)))
            below = assigned < threshold
            p = np.nan_to_num(p) * below
            if p.sum() <= 0:
                p = below.astype(np.float64)
                if p.sum() <= 0:
                    p = np.ones(num_users)
            p = p / p.sum()
            props[label] = p
            for j, piece in enumerate(np.split(pos, _cuts(p, len(pos)))):
                assigned[j] += len(piece)
                if num_shots > 0 and len(piece) > num_shots:
                    piece = rng.choice(piece, size=num_shots, replace=False)
                parts[j].extend(piece.tolist())
                sizes[j] += len(piece)
        if sizes.min() >= min_size:
            break
    else:
        raise ValueError(
            f"dirichlet_split: no split with at least {min_size} train items per client after {max_tries} tries "
            f"(beta={beta}, {num_users} users, {n_total} items); use a larger --beta or fewer --num-users"
        )
    clients_train = [_entries(train, sorted(part)) for part in parts]
    if test is None:
        return clients_train, None
    test_parts: list[list[int]] = [[] for _ in range(num_users)]
    for label in labels:
        pos = np.asarray(test_by_label.get(label, []), dtype=np.int64)
        pos = pos[rng.permutation(len(pos))]
        for j, piece in enumerate(np.split(pos, _cuts(props[label], len(pos)))):
            test_parts[j].extend(piece.tolist())
    return clients_train, [_entries(test, sorted(part)) for part in test_parts]


# --------------------------------------------------------------------------------------------------
# IID


def _deal(pos: np.ndarray, num_users: int, offset: int) -> list[np.ndarray]:
    """Deal ``pos`` round-robin starting at client ``offset``: sizes differ by at most 1."""
    return [pos[(j - offset) % num_users::num_users] for j in range(num_users)]


def iid_split(
    train: list[Datum], num_users: int, seed: int, num_shots: int = -1, test: list[Datum] | None = None
) -> tuple[list[list[Datum]], list[list[Datum]] | None]:
    """Every client gets every class; each class's items are shuffled and dealt evenly.

    With ``rng = np.random.default_rng(seed)``, for each label (ascending):

    * ``num_shots <= 0``: the shuffled items are dealt round-robin; the starting client advances
      with every item dealt (over all classes), so per-class counts differ by at most 1 between
      clients and so do the clients' totals. Every train item is in exactly one client; a class with
      fewer than ``num_users`` items can only reach some clients.
    * ``num_shots > 0``: client ``u`` gets the items at positions ``u*s .. u*s + s - 1`` (cyclically)
      of the shuffled class, ``s = min(num_shots, n_k)``: disjoint while ``num_users * num_shots <= n_k``,
      otherwise items are reused as evenly as possible; every client gets ``s`` items of every class.

    Test items (when given) are shuffled and dealt round-robin per class like the uncapped train.

    Returns:
        ``(clients_train, clients_test)`` (None when ``test`` is None); items are input objects in
        input order.
    """
    _check_users(num_users)
    num_users = int(num_users)
    rng = np.random.default_rng(seed)

    def deal_all(data: Sequence[Datum]) -> list[list[Datum]]:
        parts: list[list[int]] = [[] for _ in range(num_users)]
        offset = 0
        for pos in _indices_by_label(data).values():
            arr = np.asarray(pos, dtype=np.int64)[rng.permutation(len(pos))]
            for j, piece in enumerate(_deal(arr, num_users, offset)):
                parts[j].extend(piece.tolist())
            offset = (offset + len(arr)) % num_users
        return [_entries(data, sorted(p)) for p in parts]

    if num_shots > 0:
        parts: list[list[int]] = [[] for _ in range(num_users)]
        for pos in _indices_by_label(train).values():
            arr = np.asarray(pos, dtype=np.int64)[rng.permutation(len(pos))]
            s = min(int(num_shots), len(arr))
            for u in range(num_users):
                parts[u].extend(arr[(u * s + np.arange(s)) % len(arr)].tolist())
        clients_train = [_entries(train, sorted(p)) for p in parts]
    else:
        clients_train = deal_all(train)
    return clients_train, (deal_all(test) if test is not None else None)


# --------------------------------------------------------------------------------------------------
# hierarchical Dirichlet (CIFAR-100 coarse/fine)


def hierarchical_dirichlet_split(
    train: list[Datum],
    coarse_of_fine: list[int],
    num_users: int,
    beta: float,
    alpha: float = 10.0,
    seed: int = 12345,
    test: list[Datum] | None = None,
) -> tuple[list[list[Datum]], list[list[Datum]] | None]:
    """Coarse/fine hierarchical Dirichlet ("noniid-labeldir100", CIFAR-100 superclasses).

    ``coarse_of_fine[f]`` is the coarse class of fine label ``f``. With
    ``rng = np.random.default_rng(seed)``:

    1. for each client ``c`` (in order): ``q_c ~ Dir(beta)`` over the coarse classes, then for each
       coarse class ``g`` (ascending) ``r_{c,g} ~ Dir(alpha)`` over the fine classes of ``g``;
    2. the items of each fine class form a pool, shuffled once;
    3. clients are filled one after the other, each up to its quota ``len(train) // num_users``:
       repeat ``counts ~ Multinomial(need, w)`` with ``w_f = q'_{c,g(f)} * r'_{c,g(f),f}``, where
       ``q'`` is ``q_c`` restricted to coarse classes with items left and ``r'`` is ``r_{c,g}``
       restricted to fine classes with items left, each renormalised (uniform if the restricted
       weights are all 0); each fine class gives ``min(count, left)`` items from the front of its
       pool; until the quota is met. This is the batched form of drawing one label at a time from
       the client's mixture without replacement (exhausted labels are dropped, the hierarchy
       renormalised).

    When ``test`` is given, the same procedure (same client mixtures, fresh pools) deals the test
    items with quota ``len(test) // num_users``.

    Returns:
        ``(clients_train, clients_test)`` (None when ``test`` is None); every client has exactly its
        quota, every item is in at most one client (the ``len % num_users`` leftovers in none); items
        are the input objects in input order.

    Raises:
        ValueError: bad ``num_users``/``beta``/``alpha``, or a label without a coarse class.
    """
    _check_users(num_users)
    num_users = int(num_users)
    if not (beta > 0 and alpha > 0):
        raise ValueError(f"hierarchical_dirichlet_split: beta and alpha must be > 0, got {beta}, {alpha}")
    n_fine = len(coarse_of_fine)
    coarse_of = np.asarray(coarse_of_fine, dtype=np.int64)
    for data in (train, test or []):
        bad = sorted({d.label for d in data if not 0 <= d.label < n_fine})
        if bad:
            raise ValueError(
                f"hierarchical_dirichlet_split: labels {bad} have no entry in coarse_of_fine (length {n_fine})"
            )
    coarses = sorted(set(coarse_of.tolist()))
    fines_of = {g: np.flatnonzero(coarse_of == g) for g in coarses}
    rng = np.random.default_rng(seed)
    q = np.stack([rng.dirichlet(np.full(len(coarses), float(beta))) for _ in range(num_users)])
    r = [{g: rng.dirichlet(np.full(len(fines_of[g]), float(alpha))) for g in coarses} for _ in range(num_users)]
    q = np.nan_to_num(q)

    def restricted(weights: np.ndarray, avail: np.ndarray) -> np.ndarray:
        w = np.where(avail, np.nan_to_num(weights), 0.0)
        if w.sum() <= 0:
            w = avail.astype(np.float64)
        return w / w.sum()

    def allocate(data: Sequence[Datum]) -> list[list[Datum]]:
        pools = [np.zeros(0, dtype=np.int64) for _ in range(n_fine)]
        for label, pos in _indices_by_label(data).items():
            pools[label] = np.asarray(pos, dtype=np.int64)[rng.permutation(len(pos))]
        head = np.zeros(n_fine, dtype=np.int64)
        left = np.array([len(p) for p in pools], dtype=np.int64)
        quota = len(data) // num_users
        out: list[list[Datum]] = []
        for c in range(num_users):
            taken: list[int] = []
            need = quota
            while need > 0:
                w = np.zeros(n_fine)
                coarse_avail = np.array([left[fines_of[g]].sum() > 0 for g in coarses])
                qc = restricted(q[c], coarse_avail)
                for gi, g in enumerate(coarses):
                    if qc[gi] > 0:
                        fs = fines_of[g]
                        w[fs] = qc[gi] * restricted(r[c][g], left[fs] > 0)
                counts = np.minimum(rng.multinomial(need, w / w.sum()), left)
                for f in np.flatnonzero(counts):
                    taken.extend(pools[f][head[f]:head[f] + counts[f]].tolist())
                    head[f] += counts[f]
                    left[f] -= counts[f]
                need -= int(counts.sum())
            out.append(_entries(data, sorted(taken)))
        return out

    clients_train = allocate(train)
    return clients_train, (allocate(test) if test is not None else None)


# --------------------------------------------------------------------------------------------------
# domains


def split_by_domain(data: list[Datum], domains: list[int] | None = None) -> list[list[Datum]]:
    """One client per domain, clients ordered by ascending domain index.

    ``domains`` None: every domain present in ``data``; otherwise only those listed (deduplicated,
    sorted). Items are the input objects in input order.

    Raises:
        ValueError: a listed domain has no item in ``data``.
    """
    present = sorted({int(d.domain) for d in data})
    wanted = present if domains is None else sorted({int(x) for x in domains})
    missing = [x for x in wanted if x not in present]
    if missing:
        raise ValueError(f"split_by_domain: domains {missing} have no items; present domains: {present}")
    return [[d for d in data if d.domain == x] for x in wanted]


def leave_one_domain_out(data: list[Datum], target_domain: int) -> tuple[list[Datum], list[Datum]]:
    """``(source, target)``: the items of every other domain, and those of ``target_domain``.

    Raises:
        ValueError: ``target_domain`` has no item in ``data``; the message lists the present domains.
    """
    target = [d for d in data if d.domain == int(target_domain)]
    if not target:
        present = sorted({int(d.domain) for d in data})
        raise ValueError(f"--target-domain {target_domain} has no items; present domains: {present}")
    return [d for d in data if d.domain != int(target_domain)], target


# --------------------------------------------------------------------------------------------------
# logging helper


def client_class_counts(clients: list[list[Datum]], num_classes: int) -> np.ndarray:
    """Array ``(num_users, num_classes)`` of int64: entry ``[u, k]`` counts client ``u``'s items of label ``k``.

    Raises:
        ValueError: a label outside ``0..num_classes-1``.
    """
    counts = np.zeros((len(clients), int(num_classes)), dtype=np.int64)
    for u, items in enumerate(clients):
        for d in items:
            if not 0 <= d.label < num_classes:
                raise ValueError(f"client_class_counts: label {d.label} outside 0..{num_classes - 1}")
            counts[u, d.label] += 1
    return counts
