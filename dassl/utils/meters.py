"""Running averages of scalar metrics (Dassl's ``AverageMeter`` and ``MetricMeter``)."""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

__all__ = ["AverageMeter", "MetricMeter"]


def _to_float(val: Any) -> float:
    if isinstance(val, torch.Tensor):
        if val.numel() != 1:
            raise ValueError(f"expected a scalar tensor, got shape {tuple(val.shape)}")
        return float(val.item())
    return float(val)


class AverageMeter:
    """Current value, sum, count and average of a scalar.

    Args:
        ema: when True, ``avg`` is an exponential moving average (``avg = 0.9 * avg + 0.1 * val``,
            started at the first value) instead of the arithmetic mean.
    """

    def __init__(self, ema: bool = False):
        self.ema = ema
        self.reset()

    def reset(self) -> None:
        self.val = 0.0
        self.avg = 0.0
        self.sum = 0.0
        self.count = 0

    def update(self, val: float | torch.Tensor, n: int = 1) -> None:
        """Record ``val`` (a number or a one-element tensor) observed ``n`` times."""
        val = _to_float(val)
        self.val = val
        self.sum += val * n
        self.count += n
        if self.ema:
            self.avg = val if self.count == n else 0.9 * self.avg + 0.1 * val
        else:
            self.avg = self.sum / self.count

    def __repr__(self) -> str:
        return f"AverageMeter(val={self.val:.4f}, avg={self.avg:.4f}, count={self.count})"


class MetricMeter:
    """A dict of ``AverageMeter``s filled from ``{name: value}`` dicts.

    >>> m = MetricMeter(); m.update({"loss": 1.0}); m.update({"loss": 3.0}); m.meters["loss"].avg
    2.0
    """

    def __init__(self, delimiter: str = " "):
        self.meters: dict[str, AverageMeter] = defaultdict(AverageMeter)
        self.delimiter = delimiter

    def update(self, input_dict: dict[str, Any] | None) -> None:
        """Add one observation per key; values may be numbers or one-element tensors."""
        if input_dict is None:
            return
        if not isinstance(input_dict, dict):
            raise TypeError(f"MetricMeter.update expects a dict, got {type(input_dict).__name__}")
        for name, value in input_dict.items():
            self.meters[name].update(value)

    def get_avg(self) -> dict[str, float]:
        """``{name: average}`` over everything recorded so far."""
        return {name: meter.avg for name, meter in self.meters.items()}

    def __str__(self) -> str:
        return self.delimiter.join(f"{name} {m.val:.4f} ({m.avg:.4f})" for name, m in self.meters.items())
