"""``Datum`` and ``DatasetBase``: the dataset containers every loader fills."""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence


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
