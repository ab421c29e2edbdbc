"""``build_transform``: CLIP/Dassl-style image pipelines from ``cfg.INPUT``.

Every pipeline accepts a ``PIL.Image`` or a NumPy ``uint8`` array of shape ``(H, W, 3)`` (or
``(H, W)`` grayscale) and returns a float tensor of shape ``(3, H_out, W_out)`` with
``(H_out, W_out) = cfg.INPUT.SIZE``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

__all__ = ["AVAI_CHOICES", "INTERPOLATION_MODES", "ToPILRGB", "build_transform"]

INTERPOLATION_MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}

AVAI_CHOICES = (
    "random_resized_crop",
    "random_crop",
    "center_crop",
    "random_flip",
    "colorjitter",
    "random_gray",
    "gaussian_blur",
    "normalize",
)


class ToPILRGB:
    """Convert a ``PIL.Image`` (any mode) or a ``uint8`` array ``(H, W)``/``(H, W, 3)`` to an RGB image."""

    def __call__(self, img: Any) -> Image.Image:
        if isinstance(img, np.ndarray):
            if img.dtype != np.uint8:
                raise TypeError(f"in-memory images must be uint8 arrays, got dtype {img.dtype}")
            if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (1, 3))):
                raise ValueError(f"in-memory images must have shape (H, W) or (H, W, 3), got {img.shape}")
            if img.ndim == 3 and img.shape[2] == 1:
                img = img[:, :, 0]
            img = Image.fromarray(np.ascontiguousarray(img))
        if not isinstance(img, Image.Image):
            raise TypeError(f"expected a PIL.Image or a uint8 numpy array, got {type(img).__name__}")
        return img if img.mode == "RGB" else img.convert("RGB")

    def __repr__(self) -> str:
        return "ToPILRGB()"


def _size(cfg) -> tuple[int, int]:
    size = cfg.INPUT.SIZE
    if isinstance(size, int):
        return (size, size)
    if len(size) != 2:
        raise ValueError(f"INPUT.SIZE must be (H, W), got {size!r}")
    return (int(size[0]), int(size[1]))


def _interpolation(cfg) -> InterpolationMode:
    name = cfg.INPUT.INTERPOLATION
    if name not in INTERPOLATION_MODES:
        raise ValueError(
            f"Unknown INPUT.INTERPOLATION '{name}'; valid names: {', '.join(INTERPOLATION_MODES)}"
        )
    return INTERPOLATION_MODES[name]


def _check_choices(choices) -> list[str]:
    choices = list(choices)
    unknown = [c for c in choices if c not in AVAI_CHOICES]
    if unknown:
        raise ValueError(f"Unknown transform(s) {unknown} in INPUT.TRANSFORMS; valid names: {', '.join(AVAI_CHOICES)}")
    if "random_resized_crop" in choices and "random_crop" in choices:
        raise ValueError("INPUT.TRANSFORMS cannot hold both 'random_resized_crop' and 'random_crop'")
    return choices


def _normalize(cfg) -> T.Normalize:
    return T.Normalize(mean=list(cfg.INPUT.PIXEL_MEAN), std=list(cfg.INPUT.PIXEL_STD))


def _build_train(cfg, choices: list[str]) -> list:
    size, interp = _size(cfg), _interpolation(cfg)
    tfms: list = [ToPILRGB()]
    if "random_resized_crop" in choices:
        tfms.append(T.RandomResizedCrop(size, scale=tuple(cfg.INPUT.RRCROP_SCALE), interpolation=interp))
    else:
        tfms.append(T.Resize(max(size), interpolation=interp))
        if "random_crop" in choices:
            tfms.append(T.RandomCrop(size, padding=int(cfg.INPUT.CROP_PADDING)))
        else:  # "center_crop" or no crop at all: the output must still be exactly SIZE
            tfms.append(T.CenterCrop(size))
    if "random_flip" in choices:
        tfms.append(T.RandomHorizontalFlip())
    if "colorjitter" in choices:
        tfms.append(
            T.ColorJitter(
                brightness=cfg.INPUT.COLORJITTER_B,
                contrast=cfg.INPUT.COLORJITTER_C,
                saturation=cfg.INPUT.COLORJITTER_S,
                hue=cfg.INPUT.COLORJITTER_H,
            )
        )
    if "random_gray" in choices:
        tfms.append(T.RandomGrayscale(p=cfg.INPUT.RGS_P))
    if "gaussian_blur" in choices:
        k = int(cfg.INPUT.GB_K) | 1  # kernel size must be odd
        tfms.append(T.RandomApply([T.GaussianBlur(k)], p=cfg.INPUT.GB_P))
    tfms.append(T.ToTensor())
    if "normalize" in choices:
        tfms.append(_normalize(cfg))
    return tfms


def _build_test(cfg, choices: list[str]) -> list:
    size, interp = _size(cfg), _interpolation(cfg)
    tfms: list = [ToPILRGB(), T.Resize(max(size), interpolation=interp), T.CenterCrop(size), T.ToTensor()]
    if "normalize" in choices:
        tfms.append(_normalize(cfg))
    return tfms


def build_transform(cfg, is_train: bool = True, choices=None) -> T.Compose:
    """Build the train (augmenting) or test (deterministic) pipeline described by ``cfg.INPUT``.

    Args:
        cfg: the config; reads ``INPUT.SIZE``, ``INTERPOLATION``, ``TRANSFORMS``, ``NO_TRANSFORM``,
            ``PIXEL_MEAN``/``PIXEL_STD``, ``RRCROP_SCALE``, ``CROP_PADDING``, colour-jitter/blur keys.
        is_train: train pipeline (the ``TRANSFORMS`` in order crop -> flip -> colour -> to-tensor ->
            normalize) or test pipeline (resize the shorter side to ``max(SIZE)``, center crop,
            to-tensor, normalize if ``"normalize"`` is listed).
        choices: transform names overriding ``cfg.INPUT.TRANSFORMS``.

    With ``INPUT.NO_TRANSFORM`` both pipelines are resize + center crop + to-tensor (no
    augmentation, no normalisation).

    Raises:
        ValueError: unknown transform or interpolation name (the message lists the valid names).
    """
    choices = _check_choices(cfg.INPUT.TRANSFORMS if choices is None else choices)
    if cfg.INPUT.NO_TRANSFORM:
        size, interp = _size(cfg), _interpolation(cfg)
        return T.Compose([ToPILRGB(), T.Resize(max(size), interpolation=interp), T.CenterCrop(size), T.ToTensor()])
    return T.Compose(_build_train(cfg, choices) if is_train else _build_test(cfg, choices))
