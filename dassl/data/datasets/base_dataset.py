"""``Datum`` and ``DatasetBase``: the dataset containers every loader fills."""
from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any


class Datum:
    """One labelled sample.

    Args:
        impath: image path on disk, or a unique id (``"toyworld://<key>/<split>/<index>"``) for
            in-memory images.
        label: class index, 0-based.
        domain: domain index (0 when the dataset has one domain).
        classname: the class name of ``label``.
        image: optional in-memory image (``PIL.Image`` or ``uint8`` array of shape ``(H, W, 3)``);
            when given, loaders use it instead of reading ``impath``.
    """

    __slots__ = ("impath", "label", "domain", "classname", "image")

    def __init__(self, impath: str = "", label: int = 0, domain: int = 0, classname: str = "", image: Any = None):
        self.impath = impath
        self.label = int(label)
        self.domain = int(domain)
        self.classname = classname
        self.image = image

    def copy(self, label: int | None = None) -> Datum:
        """A new ``Datum`` equal to this one (same ``image`` reference), optionally relabelled."""
        return Datum(self.impath, self.label if label is None else label, self.domain, self.classname, self.image)

    def __repr__(self) -> str:
        return f"Datum(impath={self.impath!r}, label={self.label}, domain={self.domain}, classname={self.classname!r})"


class DatasetBase:
    """A dataset split into ``train_x`` (labelled train), ``val`` and ``test`` lists of ``Datum``.

    ``classnames`` is always in label order: ``classnames[i]`` names label ``i``.
    """

    dataset_dir = ""
    domains: list[str] = []

    def __init__(self, train_x: Sequence[Datum] = (), train_u: Sequence[Datum] = (), val: Sequence[Datum] = (),
                 test: Sequence[Datum] = (), classnames: Sequence[str] | None = None):
        self._train_x = list(train_x)
        self._train_u = list(train_u)
        self._val = list(val)
        self._test = list(test)
        if classnames is None:
            classnames = self.get_classnames(self._train_x + self._val + self._test)
        self._classnames = list(classnames)
        self._lab2cname = dict(enumerate(self._classnames))
        self._num_classes = len(self._classnames)

    @property
    def train_x(self) -> list[Datum]:
        return self._train_x

    @property
    def train_u(self) -> list[Datum]:
        return self._train_u

    @property
    def val(self) -> list[Datum]:
        return self._val

    @property
    def test(self) -> list[Datum]:
        return self._test

    @property
    def classnames(self) -> list[str]:
        return self._classnames

    @property
    def lab2cname(self) -> dict[int, str]:
        return self._lab2cname

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @staticmethod
    def get_classnames(data_source: Sequence[Datum]) -> list[str]:
        """Class names in label order, read off the data (labels must be 0..n-1)."""
        names: dict[int, str] = {}
        for item in data_source:
            names[item.label] = item.classname
        if not names:
            return []
        missing = [i for i in range(max(names) + 1) if i not in names]
        if missing:
            raise ValueError(f"labels {missing[:10]} have no sample: cannot name every class")
        return [names[i] for i in range(len(names))]

    @staticmethod
    def split_dataset_by_label(data_source: Sequence[Datum]) -> dict[int, list[Datum]]:
        output: dict[int, list[Datum]] = defaultdict(list)
        for item in data_source:
            output[item.label].append(item)
        return output

    @staticmethod
    def split_dataset_by_domain(data_source: Sequence[Datum]) -> dict[int, list[Datum]]:
        output: dict[int, list[Datum]] = defaultdict(list)
        for item in data_source:
            output[item.domain].append(item)
        return output


    def generate_fewshot_dataset(
        self, *data_sources: Sequence[Datum], num_shots: int = -1, repeat: bool = False, seed: int | None = None
    ) -> Any:
        """Sample a ``num_shots``-per-class subset of each data source (Dassl semantics).

        For every label (in order of first appearance), ``num_shots`` items are drawn without
        replacement; a label with fewer items keeps all of them, or, with ``repeat=True``, draws
        ``num_shots`` items with replacement. ``num_shots < 1`` returns the inputs unchanged.

        Args:
            *data_sources: one or more lists of ``Datum``.
            num_shots: items per label.
            repeat: sample with replacement when a label has fewer than ``num_shots`` items.
            seed: with a seed, sampling uses ``random.Random(seed)`` (deterministic, independent of
                the global RNG); without one, the global ``random`` module (as Dassl does).

        Returns:
            One list when one source is given, else a list of lists (the ``Datum`` objects are
            the inputs', not copies).
        """
        if num_shots < 1:
            return data_sources[0] if len(data_sources) == 1 else data_sources
        rng = random.Random(seed) if seed is not None else random
        output = []
        for data_source in data_sources:
            tracker = self.split_dataset_by_label(data_source)
            dataset: list[Datum] = []
            for items in tracker.values():
                if len(items) >= num_shots:
                    sampled = rng.sample(items, num_shots)
                elif repeat:
                    sampled = rng.choices(items, k=num_shots)
                else:
                    sampled = list(items)
                dataset.extend(sampled)
            output.append(dataset)
        return output[0] if len(output) == 1 else output

    @staticmethod
    def subsample_classes(*args: Sequence[Datum], subsample: str = "all") -> tuple[list[Datum], ...]:
        """CoOp's base-to-novel class split (Dassl API): see the module function ``subsample_classes``."""
        return subsample_classes(*args, subsample=subsample)


def subsample_classes(*splits: Sequence[Datum], subsample: str,
                      num_classes: int | None = None) -> tuple[list[Datum], ...]:
    """CoOp's base-to-novel class split applied to every list in ``splits``.

    The labels present in the union of ``splits`` (or ``range(num_classes)`` when given, which keeps
    the split right when some split lacks a class) are sorted; with ``n`` of them and ``m = ceil(n/2)``:
    ``"base"`` keeps the items of the first ``m`` labels, ``"new"`` the remaining ``n - m`` labels
    relabelled from 0 by rank (``label - m`` for labels ``0..n-1``), ``"all"`` everything.

    Returns:
        One new list per input split of new ``Datum`` objects (inputs are never mutated or aliased).

    Raises:
        ValueError: ``subsample`` is not one of ``all``, ``base``, ``new``.
    """
    if subsample not in ("all", "base", "new"):
        raise ValueError(f"subsample must be one of all, base, new ('all', 'base' or 'new'); got {subsample!r}")
    if subsample == "all":
        return tuple([d.copy() for d in split] for split in splits)
    if num_classes is not None:
        labels = list(range(int(num_classes)))
    else:
        labels = sorted({int(d.label) for split in splits for d in split})
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabel = {y: new for new, y in enumerate(selected)}
    return tuple([d.copy(relabel[d.label]) for d in split if d.label in relabel] for split in splits)
