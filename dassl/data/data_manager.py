"""Data loading: ``DatasetWrapper``, ``build_data_loader`` and ``DataManager``."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler

from dassl.utils.tools import read_image

from .datasets import DatasetBase, Datum, build_dataset
from .transforms import ToPILRGB, build_transform

__all__ = ["DataManager", "DatasetWrapper", "build_data_loader"]


class DatasetWrapper(Dataset):
    """A torch ``Dataset`` over a list of ``Datum``.

    ``__getitem__(i)`` returns a dict:

    * ``img``: ``transform(image)``, a tensor of shape ``(3, H, W)``; with ``k_tfm > 1`` a list of
      ``k_tfm`` independently augmented views;
    * ``label`` (int), ``domain`` (int), ``impath`` (str), ``index`` (int, = ``i``);
    * ``img0`` (only with ``return_img0``): the un-augmented image as a ``(3, H0, W0)`` tensor in
      [0, 1] (its size is the source image's, so batch it only if all images share a size).

    The image is ``Datum.image`` when it is not None (PIL or ``uint8`` ``(H, W, 3)`` array), otherwise
    ``read_image(impath)``.
    """

    def __init__(self, data_source: Sequence[Datum], transform: Callable | None, k_tfm: int = 1,
                 return_img0: bool = False):
        if transform is None:
            raise ValueError("DatasetWrapper needs a transform that returns tensors (see build_transform)")
        if k_tfm < 1:
            raise ValueError(f"k_tfm must be >= 1, got {k_tfm}")
        self.data_source = list(data_source)
        self.transform = transform
        self.k_tfm = int(k_tfm)
        self.return_img0 = return_img0
        self._to_pil = ToPILRGB()

    def __len__(self) -> int:
        return len(self.data_source)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        item = self.data_source[idx]
        img0 = read_image(item.impath) if item.image is None else self._to_pil(item.image)
        if self.k_tfm == 1:
            img = self.transform(img0)
        else:
            img = [self.transform(img0) for _ in range(self.k_tfm)]
        output = {"img": img, "label": item.label, "domain": item.domain, "impath": item.impath, "index": idx}
        if self.return_img0:
            from torchvision.transforms.functional import pil_to_tensor

            output["img0"] = pil_to_tensor(img0).float().div(255.0)
        return output


def build_data_loader(
    cfg,
    data_source: Sequence[Datum],
    batch_size: int,
    is_train: bool,
    transform: Callable,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A ``DataLoader`` over ``DatasetWrapper(data_source, transform)``.

    Training loaders shuffle with ``RandomSampler(generator=generator)`` (``generator=None`` draws
    from torch's global RNG, so ``set_random_seed`` makes it reproducible); test loaders are
    sequential. Uses ``cfg.DATALOADER.NUM_WORKERS``, ``K_TRANSFORMS`` and ``RETURN_IMG0``; memory is
    pinned only when CUDA is used. Batches are dicts of ``img`` ``(B, 3, H, W)``, ``label`` ``(B,)``,
    ``domain`` ``(B,)``, ``impath`` (list of B str), ``index`` ``(B,)``.

    Raises:
        ValueError: empty ``data_source`` or ``batch_size < 1``.
    """
    if len(data_source) == 0:
        raise ValueError("build_data_loader: data_source is empty")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dataset = DatasetWrapper(
        data_source,
        transform,
        k_tfm=int(cfg.DATALOADER.K_TRANSFORMS) if is_train else 1,
        return_img0=bool(cfg.DATALOADER.RETURN_IMG0),
    )
    sampler = RandomSampler(dataset, generator=generator) if is_train else SequentialSampler(dataset)
    num_workers = int(cfg.DATALOADER.NUM_WORKERS)
    return DataLoader(
        dataset,
        batch_size=int(batch_size),
        sampler=sampler,
        num_workers=num_workers,
        drop_last=bool(drop_last),
        pin_memory=bool(cfg.USE_CUDA) and torch.cuda.is_available(),
        generator=generator,
        persistent_workers=False,
    )


class DataManager:
    """Builds a dataset's transforms and loaders.

    Args:
        cfg: the config (``DATASET.NAME`` when ``dataset`` is None, ``DATALOADER.*``, ``INPUT.*``).
        dataset: an already built ``DatasetBase``; default ``build_dataset(cfg)``.
        custom_tfm_train / custom_tfm_test: transforms replacing ``build_transform(cfg, True/False)``.
        generator: optional ``torch.Generator`` for the training loaders' shuffling.

    Attributes: ``dataset``, ``train_loader_x``, ``train_loader_u`` (None without ``train_u``),
    ``val_loader`` (None without a validation split), ``test_loader`` (None without a test split),
    ``tfm_train``, ``tfm_test``, and the properties ``num_classes``, ``num_source_domains``,
    ``lab2cname``, ``classnames``.
    """

    def __init__(self, cfg, dataset: DatasetBase | None = None, custom_tfm_train: Callable | None = None,
                 custom_tfm_test: Callable | None = None, generator: torch.Generator | None = None):
        self.cfg = cfg
        self.dataset = build_dataset(cfg) if dataset is None else dataset
        self.tfm_train = build_transform(cfg, is_train=True) if custom_tfm_train is None else custom_tfm_train
        self.tfm_test = build_transform(cfg, is_train=False) if custom_tfm_test is None else custom_tfm_test
        dl = cfg.DATALOADER
        ds = self.dataset

        self.train_loader_x = build_data_loader(
            cfg, ds.train_x, dl.TRAIN_X.BATCH_SIZE, True, self.tfm_train, generator=generator
        )
        self.train_loader_u = None
        if ds.train_u:
            bs_u = dl.TRAIN_X.BATCH_SIZE if dl.TRAIN_U.SAME_AS_X else dl.TRAIN_U.BATCH_SIZE
            self.train_loader_u = build_data_loader(cfg, ds.train_u, bs_u, True, self.tfm_train, generator=generator)
        self.val_loader = (
            build_data_loader(cfg, ds.val, dl.TEST.BATCH_SIZE, False, self.tfm_test) if ds.val else None
        )
        self.test_loader = (
            build_data_loader(cfg, ds.test, dl.TEST.BATCH_SIZE, False, self.tfm_test) if ds.test else None
        )
        if cfg.VERBOSE:
            self.show_dataset_summary()

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def num_source_domains(self) -> int:
        return len(self.cfg.DATASET.SOURCE_DOMAINS)

    @property
    def lab2cname(self) -> dict[int, str]:
        return self.dataset.lab2cname

    @property
    def classnames(self) -> list[str]:
        return self.dataset.classnames

    def show_dataset_summary(self) -> None:
        """Print the dataset name, class count and split sizes."""
        cfg, ds = self.cfg, self.dataset
        rows = [("Dataset", cfg.DATASET.NAME or type(ds).__name__), ("# classes", f"{self.num_classes:,}")]
        if cfg.DATASET.SOURCE_DOMAINS:
            rows.append(("Source", ", ".join(cfg.DATASET.SOURCE_DOMAINS)))
        if cfg.DATASET.TARGET_DOMAINS:
            rows.append(("Target", ", ".join(cfg.DATASET.TARGET_DOMAINS)))
        rows.append(("# train_x", f"{len(ds.train_x):,}"))
        if ds.train_u:
            rows.append(("# train_u", f"{len(ds.train_u):,}"))
        if ds.val:
            rows.append(("# val", f"{len(ds.val):,}"))
        rows.append(("# test", f"{len(ds.test):,}"))
        width = max(len(k) for k, _ in rows)
        print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
