"""Behaviour of the federated partitions in ``federated/partition.py`` on small synthetic data."""
from __future__ import annotations

import numpy as np
import pytest

from dassl.data.datasets import Datum
from federated import partition as P


def make_data(counts: list[int], domain: int = 0, tag: str = "x") -> list[Datum]:
    """``counts[k]`` items of label ``k``, interleaved across classes; each item has a unique impath and image."""
    items = []
    for i in range(max(counts)):
        for label, n in enumerate(counts):
            if i < n:
                items.append(Datum(impath=f"{tag}/{label}/{i}", label=label, domain=domain,
                                   classname=f"class{label}", image=object()))
    return items


def ids(items: list[Datum]) -> list[int]:
    return [id(d) for d in items]


def snapshot(items: list[Datum]) -> list[tuple]:
    return [(id(d), d.impath, d.label, d.domain, d.classname, id(d.image)) for d in items]


def label_entropy(clients: list[list[Datum]], num_classes: int) -> float:
    counts = P.client_class_counts(clients, num_classes).astype(float)
    p = counts / counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return float(h.mean())


# ------------------------------------------------------------------------------------------------ base / novel


def test_subsample_base_new_relabels_hand_made_example():
    train = make_data([2, 2, 2, 2, 2], tag="tr")
    test = make_data([1, 1, 1, 1, 1], tag="te")
    before = snapshot(train) + snapshot(test)

    base_train, base_test = P.subsample_classes(train, test, subsample="base")
    assert sorted({d.label for d in base_train}) == [0, 1, 2]
    assert len(base_train) == 6 and len(base_test) == 3
    assert all(d.classname == f"class{d.label}" for d in base_train)

    new_train, new_test = P.subsample_classes(train, test, subsample="new")
    assert sorted({d.label for d in new_train}) == [0, 1]
    assert len(new_train) == 4 and len(new_test) == 2
    # label 3 -> 0, label 4 -> 1, class names kept
    assert {(d.label, d.classname) for d in new_train} == {(0, "class3"), (1, "class4")}
    originals = {d.impath: d for d in train}
    for d in new_train:
        orig = originals[d.impath]
        assert d is not orig and d.image is orig.image and d.label == orig.label - 3

    all_train, all_test = P.subsample_classes(train, test, subsample="all")
    assert [(d.impath, d.label) for d in all_train] == [(d.impath, d.label) for d in train]
    assert len(all_test) == len(test)

    assert snapshot(train) + snapshot(test) == before  # inputs untouched

    names = [f"class{k}" for k in range(5)]
    assert P.subsample_classnames(names, "base") == ["class0", "class1", "class2"]
    assert P.subsample_classnames(names, "new") == ["class3", "class4"]
    assert P.subsample_classnames(names, "all") == names


def test_subsample_counts_classes_over_union_of_splits_or_num_classes():
    train = make_data([3, 3, 3, 3])  # labels 0..3
    test = [Datum(impath="t4", label=4, classname="class4")]
    (new_train, new_test) = P.subsample_classes(train, test, subsample="new")  # n=5 -> m=3
    assert [d.label for d in new_train] == [0, 0, 0] and [d.label for d in new_test] == [1]
    (only_test,) = P.subsample_classes(test, subsample="new", num_classes=5)
    assert [d.label for d in only_test] == [1]


@pytest.mark.parametrize("bad", ["novel", "Base", "", "base2"])
def test_subsample_rejects_unknown_mode(bad):
    with pytest.raises(ValueError, match="all, base, new"):
        P.subsample_classes(make_data([1, 1]), subsample=bad)
    with pytest.raises(ValueError, match="all, base, new"):
        P.subsample_classnames(["a", "b"], bad)


# ------------------------------------------------------------------------------------------------ pathological


def test_pathological_disjoint_classes_and_counts_per_client():
    train = make_data([20] * 10)
    before = snapshot(train)
    clients, classes = P.pathological_split(train, num_users=3, num_shots=4, seed=2023)
    assert [len(c) for c in classes] == [3, 3, 4]  # cpu = round(10/3) = 3, last client gets the rest
    flat = [k for c in classes for k in c]
    assert sorted(flat) == list(range(10)) and len(set(flat)) == 10  # disjoint, union = all classes
    assert all(c == sorted(c) for c in classes)
    counts = P.client_class_counts(clients, 10)
    for u, cls in enumerate(classes):
        assert set(np.flatnonzero(counts[u])) == set(cls)
        assert all(counts[u, k] == 4 for k in cls)  # num_shots per class
    all_ids = [i for c in clients for i in ids(c)]
    assert len(all_ids) == len(set(all_ids)) and set(all_ids) <= set(ids(train))
    assert snapshot(train) == before


def test_pathological_uses_python_round_and_last_client_takes_remainder():
    train = make_data([2] * 10)
    _, classes = P.pathological_split(train, num_users=4, num_shots=1)
    assert [len(c) for c in classes] == [2, 2, 2, 4]  # round(2.5) == 2 (banker's rounding)
    _, classes = P.pathological_split(train, num_users=8, num_shots=1)
    assert [len(c) for c in classes] == [1] * 7 + [3]


def test_pathological_shots_all_items_when_nonpositive_or_too_few():
    train = make_data([5, 2, 7, 1])
    clients, _ = P.pathological_split(train, num_users=2, num_shots=0)
    assert sorted(ids([d for c in clients for d in c])) == sorted(ids(train))
    clients, classes = P.pathological_split(train, num_users=2, num_shots=3)
    counts = P.client_class_counts(clients, 4).sum(axis=0)
    assert counts.tolist() == [3, 2, 3, 1]


def test_pathological_deterministic_and_seed_dependent():
    train = make_data([10] * 12)
    a = P.pathological_split(train, 4, 2, seed=7)
    b = P.pathological_split(train, 4, 2, seed=7)
    assert a[1] == b[1] and [ids(c) for c in a[0]] == [ids(c) for c in b[0]]
    others = [P.pathological_split(train, 4, 2, seed=s)[1] for s in range(3)]
    assert any(o != a[1] for o in others)
    assert P.pathological_split(train, 4, 2)[1] == P.pathological_split(train, 4, 2, seed=2023)[1]


def test_pathological_errors_for_too_many_users():
    train = make_data([3] * 10)
    with pytest.raises(ValueError, match=r"--num-users 11 .*10 classes.*at most 10 users.*dirichlet/iid"):
        P.pathological_split(train, num_users=11, num_shots=1)
    # round(10/6) = 2 -> the 6th client would get no class
    with pytest.raises(ValueError, match="no class"):
        P.pathological_split(train, num_users=6, num_shots=1)
    with pytest.raises(ValueError):
        P.pathological_split(train, num_users=0, num_shots=1)


def test_split_by_classes_gives_every_item_of_the_clients_classes():
    test = make_data([3, 4, 5, 6])
    out = P.split_by_classes(test, [[0, 2], [1], [3]])
    assert [len(c) for c in out] == [8, 4, 6]
    assert {d.label for d in out[0]} == {0, 2}


# ------------------------------------------------------------------------------------------------ dirichlet


def test_dirichlet_assigns_every_item_once_and_respects_min_size():
    train = make_data([40] * 10)
    test = make_data([10] * 10, tag="te")
    before = snapshot(train)
    clients, clients_test = P.dirichlet_split(train, 5, beta=0.3, seed=1, min_size=10, test=test)
    flat = [i for c in clients for i in ids(c)]
    assert sorted(flat) == sorted(ids(train))
    assert min(len(c) for c in clients) >= 10
    flat_test = [i for c in clients_test for i in ids(c)]
    assert sorted(flat_test) == sorted(ids(test))
    assert snapshot(train) == before
    # balancing rule: a client stops receiving items once it holds >= N/num_users of them
    assert max(len(c) for c in clients) < len(train) / 5 + 40


def test_dirichlet_test_proportions_follow_train_per_class():
    train = make_data([60] * 6)
    test = make_data([30] * 6, tag="te")
    clients, clients_test = P.dirichlet_split(train, 4, beta=0.5, seed=3, min_size=5, test=test)
    tr = P.client_class_counts(clients, 6) / 60.0
    te = P.client_class_counts(clients_test, 6) / 30.0
    assert np.all(np.abs(tr - te) < 1 / 60 + 1 / 30 + 1e-9)


def test_dirichlet_smaller_beta_more_skew_and_deterministic():
    train = make_data([30] * 10)
    low = np.mean([label_entropy(P.dirichlet_split(train, 5, 0.1, seed=s, min_size=5)[0], 10) for s in range(3)])
    high = np.mean([label_entropy(P.dirichlet_split(train, 5, 100.0, seed=s, min_size=5)[0], 10) for s in range(3)])
    assert low < high - 0.5
    a, _ = P.dirichlet_split(train, 5, 0.3, seed=11, min_size=5)
    b, _ = P.dirichlet_split(train, 5, 0.3, seed=11, min_size=5)
    c, _ = P.dirichlet_split(train, 5, 0.3, seed=12, min_size=5)
    assert [ids(x) for x in a] == [ids(x) for x in b]
    assert [ids(x) for x in a] != [ids(x) for x in c]


def test_dirichlet_shot_cap_and_errors():
    train = make_data([50] * 8)
    clients, none = P.dirichlet_split(train, 4, beta=1.0, seed=0, min_size=5, num_shots=3)
    assert none is None
    assert P.client_class_counts(clients, 8).max() <= 3
    assert min(len(c) for c in clients) >= 5
    with pytest.raises(ValueError, match="larger --beta"):
        P.dirichlet_split(make_data([12] * 10), 10, beta=0.01, seed=0, min_size=10, max_tries=5)
    with pytest.raises(ValueError, match="fewer --num-users"):
        P.dirichlet_split(make_data([3] * 3), 5, beta=1.0, seed=0, min_size=10)
    with pytest.raises(ValueError, match="beta"):
        P.dirichlet_split(train, 4, beta=0.0, seed=0)


# ------------------------------------------------------------------------------------------------ iid


def test_iid_every_client_sees_all_classes_balanced():
    train = make_data([13, 10, 7, 21, 9])
    test = make_data([6, 5, 4, 8, 5], tag="te")
    clients, clients_test = P.iid_split(train, 3, seed=0, test=test)
    counts = P.client_class_counts(clients, 5)
    assert (counts > 0).all()
    assert (counts.max(axis=0) - counts.min(axis=0) <= 1).all()
    sizes = [len(c) for c in clients]
    assert max(sizes) - min(sizes) <= 1
    assert sorted(i for c in clients for i in ids(c)) == sorted(ids(train))
    tcounts = P.client_class_counts(clients_test, 5)
    assert (tcounts.max(axis=0) - tcounts.min(axis=0) <= 1).all()
    assert sorted(i for c in clients_test for i in ids(c)) == sorted(ids(test))


def test_iid_num_shots_per_class_disjoint_when_possible():
    train = make_data([12, 12, 5])
    clients, _ = P.iid_split(train, 3, seed=1, num_shots=4)
    counts = P.client_class_counts(clients, 3)
    assert counts[:, :2].tolist() == [[4, 4]] * 3 and (counts[:, 2] == 4).all()
    by_class = [[id(d) for c in clients for d in c if d.label == k] for k in range(3)]
    assert len(set(by_class[0])) == 12 and len(set(by_class[1])) == 12  # 3 users x 4 shots = 12: no overlap
    assert len(set(by_class[2])) == 5  # 5 items for 12 slots: all used
    for c in clients:
        assert len(set(ids(c))) == len(c)  # no repeat within a client
    a, _ = P.iid_split(train, 3, seed=1, num_shots=4)
    assert [ids(x) for x in a] == [ids(x) for x in clients]


# ------------------------------------------------------------------------------------------------ hierarchical


def test_hierarchical_dirichlet_quota_and_items_at_most_once():
    coarse_of_fine = [k // 5 for k in range(20)]  # 4 coarse x 5 fine
    train = make_data([20] * 20)
    test = make_data([5] * 20, tag="te")
    clients, clients_test = P.hierarchical_dirichlet_split(train, coarse_of_fine, 7, beta=0.3, seed=5, test=test)
    assert [len(c) for c in clients] == [len(train) // 7] * 7
    flat = [i for c in clients for i in ids(c)]
    assert len(flat) == len(set(flat)) and set(flat) <= set(ids(train))
    assert [len(c) for c in clients_test] == [len(test) // 7] * 7
    flat_t = [i for c in clients_test for i in ids(c)]
    assert len(flat_t) == len(set(flat_t)) and set(flat_t) <= set(ids(test))
    again, _ = P.hierarchical_dirichlet_split(train, coarse_of_fine, 7, beta=0.3, seed=5)
    assert [ids(c) for c in again] == [ids(c) for c in clients]


def test_hierarchical_dirichlet_beta_controls_coarse_skew():
    coarse_of_fine = [k // 5 for k in range(20)]
    train = make_data([30] * 20)

    def coarse_entropy(beta):
        clients, _ = P.hierarchical_dirichlet_split(train, coarse_of_fine, 10, beta=beta, seed=0)
        coarse = [[Datum(label=coarse_of_fine[d.label]) for d in c] for c in clients]
        return label_entropy(coarse, 4)

    assert coarse_entropy(0.1) < coarse_entropy(100.0) - 0.3
    with pytest.raises(ValueError, match="coarse_of_fine"):
        P.hierarchical_dirichlet_split(train, coarse_of_fine[:10], 3, beta=1.0)


# ------------------------------------------------------------------------------------------------ domains


def test_split_by_domain_and_leave_one_domain_out():
    data = make_data([2, 2], domain=2, tag="d2") + make_data([3, 1], domain=0, tag="d0") \
        + make_data([1, 1], domain=1, tag="d1")
    clients = P.split_by_domain(data)
    assert [{d.domain for d in c} for c in clients] == [{0}, {1}, {2}]
    assert [len(c) for c in clients] == [4, 2, 4]
    picked = P.split_by_domain(data, [2, 0])
    assert [{d.domain for d in c} for c in picked] == [{0}, {2}]
    with pytest.raises(ValueError, match="present domains"):
        P.split_by_domain(data, [5])
    source, target = P.leave_one_domain_out(data, 1)
    assert {d.domain for d in target} == {1} and len(target) == 2
    assert {d.domain for d in source} == {0, 2} and len(source) == 8
    with pytest.raises(ValueError, match="present domains"):
        P.leave_one_domain_out(data, 3)


def test_client_class_counts():
    clients = [make_data([2, 0, 1]), make_data([0, 3])]
    assert P.client_class_counts(clients, 3).tolist() == [[2, 0, 1], [0, 3, 0]]
    with pytest.raises(ValueError):
        P.client_class_counts(clients, 1)


# ------------------------------------------------------------------------------------------------ names


@pytest.mark.parametrize("name,canon", [
    ("pathological", "pathological"), ("noniid-pathological", "pathological"), ("pat", "pathological"),
    ("dirichlet", "dirichlet"), ("noniid-labeldir", "dirichlet"), ("dir", "dirichlet"), ("Dir", "dirichlet"),
    ("iid", "iid"), ("homo", "iid"), ("hierarchical-dirichlet", "hierarchical-dirichlet"),
    ("noniid-labeldir100", "hierarchical-dirichlet"), ("noniid_labeldir100", "hierarchical-dirichlet"),
    ("domain", "domain"), ("class-chunks", "class-chunks"), ("class_chunks", "class-chunks"),
    ("FedTPG", "class-chunks"),
])
def test_partition_aliases(name, canon):
    assert P.canonical_partition(name) == canon
    assert set(P.PARTITIONS.values()) == {"pathological", "dirichlet", "iid", "hierarchical-dirichlet", "domain",
                                          "class-chunks"}


def test_unknown_partition_lists_valid_names():
    with pytest.raises(ValueError, match="noniid-labeldir.*homo"):
        P.canonical_partition("labeluni")
