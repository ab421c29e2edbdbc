"""Data loading: ``DatasetWrapper`` and ``build_data_loader`` (FedTV builds each client's loaders itself)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler

from dassl.utils.tools import read_image

from .datasets import Datum
from .transforms import ToPILRGB

__all__ = ["DatasetWrapper", "build_data_loader"]


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

