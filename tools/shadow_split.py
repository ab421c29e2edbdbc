"""Shadow data carved out of a real dataset for ``tools/mia_shadow.py``: images the target run never
trained on, laid out like the target's clients.

* **Pool**: the items of the run's classes (after ``DATASET.SUBSAMPLE_CLASSES``, labelled in the run's label
  space) of the dataset splits in ``splits`` (``train``, ``val``, ``test``), minus every item any target
  client trained on (the target's members) and every item of any target client's test set (the target's
  non-member candidates, whichever client is attacked). What is left of the train split is what the
  partition (few-shot draw, Dirichlet share) did not give to a client.
* **Shadow** ``k`` copies the target's clients: client ``c`` gets, for every stratum (label, domain) in which
  the target client has ``n`` training items, ``m = max(1, floor(fraction * n + 1/2))`` members (its training
  items) and ``m`` non-members (its test items) of that stratum. Within a shadow no item is used twice
  (members, non-members and clients pairwise disjoint).
* **Draw**: per stratum, the pool's items (ordered by split, then path) are permuted by
  ``numpy.random.default_rng([seed, label, domain, k])`` and shadow ``k`` takes the first ``2 sum_c m``:
  shadows draw independently, so one image may serve several shadows (Shokri et al.'s shadow training
  sets may overlap). ``disjoint``: one permutation per stratum (``[seed, label, domain]``), shadow ``k``
  takes the ``k``-th slice, so no image serves two shadows.

A pool too small for the plan is a ``DataError`` whose one line names the class and the largest
``--shadow-fraction`` (and, with ``disjoint``, shadow count) that fits.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from dassl.data.datasets import Datum
from dassl.data.datasets.base_dataset import subsample_classes
from federated.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass
class CarveSettings:
    """How the shadow data is carved (module docstring)."""

    splits: tuple[str, ...] = SPLITS
    fraction: float = 1.0
    disjoint: bool = False
    seed: int = 0


@dataclass
class ShadowSplit:
    """One shadow's clients: ``train[c]`` (members) and ``test[c]`` (non-members) of client ``c``."""

    train: list[list[Datum]]
    test: list[list[Datum]]


def carve_pool(dataset, subsample: str, trained: set[str], evaluated: set[str],
               splits: tuple[str, ...] = SPLITS) -> dict[str, list[Datum]]:
    """The items of ``splits`` of ``dataset`` (a ``DatasetBase``) in the run's classes and label space that
    are in neither ``trained`` nor ``evaluated`` (impaths), by split, each sorted by path."""
    parts = dict(zip(SPLITS, subsample_classes(dataset.train_x, dataset.val or [], dataset.test, subsample=subsample,
                                                num_classes=len(dataset.classnames)), strict=True))
    used = trained | evaluated
    return {s: sorted((d for d in parts[s] if d.impath not in used), key=lambda d: d.impath) for s in splits}


def _stratum(d: Datum) -> tuple[int, int]:
    return d.label, d.domain


def client_demand(target_train: list[list[Datum]], fraction: float) -> list[dict[tuple[int, int], int]]:
    """Members (= non-members) each shadow client needs per stratum (label, domain)."""
    return [{s: max(1, int(fraction * n + 0.5)) for s, n in sorted(Counter(map(_stratum, items)).items())}
            for items in target_train]


def _totals(demand: list[dict[tuple[int, int], int]]) -> Counter:
    return sum((Counter(d) for d in demand), Counter())


def _shortfall(target_train, by_stratum: dict, shadows: int, fraction: float, disjoint: bool):
    """The stratum that lacks the most items for the plan, with what it has and needs; None when it fits."""
    copies = shadows if disjoint else 1
    worst = None
    for s, d in sorted(_totals(client_demand(target_train, fraction)).items()):
        have, need = len(by_stratum.get(s, [])), copies * 2 * d
        if have < need and (worst is None or need - have > worst[2] - worst[1]):
            worst = (s, have, need)
    return worst


def plan_shadows(target_train: list[list[Datum]], pool: dict[str, list[Datum]], shadows: int,
                 settings: CarveSettings, classnames: list[str], dataset_name: str) -> list[ShadowSplit]:
    """``shadows`` shadow splits carved from ``pool`` (``carve_pool``) like ``target_train`` (module docstring).

    Raises:
        DataError: the pool has too few items of some stratum (one line: what to pass instead).
    """
    by_stratum: dict[tuple[int, int], list[Datum]] = {}
    for split in pool.values():
        for d in split:
            by_stratum.setdefault(_stratum(d), []).append(d)
    worst = _shortfall(target_train, by_stratum, shadows, settings.fraction, settings.disjoint)
    if worst is not None:
        raise DataError(_too_few(worst, target_train, by_stratum, pool, shadows, settings, classnames, dataset_name))
    demand = client_demand(target_train, settings.fraction)
    totals = _totals(demand)
    plans = [ShadowSplit([[] for _ in target_train], [[] for _ in target_train]) for _ in range(shadows)]
    for s in sorted(totals):
        items, size = by_stratum[s], 2 * totals[s]
        for k, plan in enumerate(plans):
            key = [settings.seed, *s] + ([] if settings.disjoint else [k])
            order = np.random.default_rng(key).permutation(len(items))
            start = k * size if settings.disjoint else 0
            chosen = [items[i] for i in order[start:start + size]]
            for c, need in enumerate(demand):
                m = need.get(s, 0)
                plan.train[c] += chosen[:m]
                plan.test[c] += chosen[m:2 * m]
                chosen = chosen[2 * m:]
    return plans


def _too_few(worst, target_train, by_stratum, pool, shadows, settings: CarveSettings, classnames, dataset_name) -> str:
    """The one-line error of a pool too small for the plan, with the changes of the options that fit."""
    (label, domain), have, need = worst

    def fits(n: int, fraction: float, disjoint: bool) -> bool:
        return _shortfall(target_train, by_stratum, n, fraction, disjoint) is None

    fixes = [f"--shadow-fraction {f / 100:g}" for f in range(int(settings.fraction * 100), 0, -1)
             if fits(shadows, f / 100, settings.disjoint)][:1]
    if settings.disjoint:
        fixes += [f"--shadows {n}" for n in range(shadows - 1, 0, -1) if fits(n, settings.fraction, True)][:1]
        fixes += ["no --disjoint-shadows"] if fits(shadows, settings.fraction, False) else []
    if set(settings.splits) != set(SPLITS):
        fixes.append(f"--carve {','.join(SPLITS)} (more images)")
    where = ", ".join(f"{s} {sum(_stratum(d) == (label, domain) for d in items)}" for s, items in pool.items())
    domain_text = f" (domain {domain})" if any(d.domain for items in target_train for d in items) else ""
    per_shadow = need // 2 // (shadows if settings.disjoint else 1)
    fix = (f"pass {' or '.join(fixes)}" if fixes else
           "not even one member and one non-member per client fit: this target cannot be shadowed on this dataset")
    return (f"{dataset_name}: class '{classnames[label]}'{domain_text} has {have} images the target neither trained "
            f"on nor tests ({where}) but the shadow data needs {need} ({per_shadow} members + {per_shadow} non-members "
            f"per shadow{f' x {shadows} disjoint shadows' if settings.disjoint else ''}): {fix}")


def split_of(pool: dict[str, list[Datum]]) -> dict[str, str]:
    """The dataset split of every pool item, by path."""
    return {d.impath: s for s, items in pool.items() for d in items}
