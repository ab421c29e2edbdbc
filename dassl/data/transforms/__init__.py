"""Image transforms built from ``cfg.INPUT``."""
from .transforms import AVAI_CHOICES, INTERPOLATION_MODES, ToPILRGB, build_transform

__all__ = ["AVAI_CHOICES", "INTERPOLATION_MODES", "ToPILRGB", "build_transform"]
