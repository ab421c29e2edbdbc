"""Dassl-compatible trainer bases: ``SimpleTrainer`` and ``TrainerX``.

A trainer owns one or more registered models (each with an optional optimiser and LR scheduler),
and implements ``build_model`` and ``forward_backward``. The names follow Dassl.pytorch so that a
CoOp-style trainer ports with little change: ``register_model``, ``model_backward_and_update``,
``update_lr``, ``set_model_mode``, ``parse_batch_train``, ``model_inference``, ``test``.
"""
from __future__ import annotations

import logging
import math
import os
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from dassl.utils.atomic import atomic_write

logger = logging.getLogger("fedtv.engine")


class NonFiniteLossError(RuntimeError):
    """A training loss became NaN or infinite. ``context`` says where (client, round, step)."""

    def __init__(self, message: str, context: dict[str, Any] | None = None):
        super().__init__(message)
        self.context = dict(context or {})


def check_finite_loss(value: float, context: dict[str, Any]) -> None:
    """Raise ``NonFiniteLossError`` when the loss ``value`` is NaN or infinite; ``context`` says where."""
    if not math.isfinite(value):
        where = ", ".join(f"{k} {v}" for k, v in context.items())
        raise NonFiniteLossError(f"loss is {value} ({where or 'during training'})", context)


class _WriteErrors:
    """A binary file that remembers the first ``OSError`` of its ``write`` (torch's zip writer turns it
    into an unhelpful ``RuntimeError``)."""

    def __init__(self, f):
        self.f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self.f.flush()


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` through a private temporary file and an atomic rename
    (``dassl.utils.atomic``): a crash while writing leaves the previous file intact, and a link planted
    at a temporary name is never followed. A failed write (disk full ...) raises its ``OSError``."""

    def write(f) -> None:
        checked = _WriteErrors(f)
        try:
            torch.save(obj, checked)
        except RuntimeError:
            if checked.error is not None:
                raise checked.error from None
            raise

    atomic_write(path, write)


class SimpleTrainer:
    """Model registry, optimisation helpers, an epoch loop and evaluation (Dassl's ``SimpleTrainer``)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self._models: OrderedDict[str, nn.Module] = OrderedDict()
        self._optims: OrderedDict[str, torch.optim.Optimizer | None] = OrderedDict()
        self._scheds: OrderedDict[str, Any] = OrderedDict()
        use_cuda = bool(cfg.USE_CUDA) and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_cuda else "cpu")
        self.start_epoch = 0
        self.epoch = 0
        self.max_epoch = int(cfg.OPTIM.MAX_EPOCH)
        self.output_dir = cfg.OUTPUT_DIR
        self.train_loader_x = None
        self.test_loader = None
        self.val_loader = None
        self.evaluator = None
        self.anomaly_context: dict[str, Any] = {}

    # ------------------------------------------------------------------ model registry
    def register_model(self, name: str = "model", model: nn.Module | None = None, optim=None, sched=None) -> None:
        """Register ``model`` (and its optimiser / scheduler) under ``name``."""
        if model is None:
            raise ValueError("register_model needs a model")
        if name in self._models:
            raise KeyError(f"a model named '{name}' is already registered")
        self._models[name] = model
        self._optims[name] = optim
        self._scheds[name] = sched

    def set_optimizer(self, name: str, optim, sched=None) -> None:
        """Replace the optimiser and scheduler of a registered model (e.g. fresh per client)."""
        self._optims[name] = optim
        self._scheds[name] = sched

    def get_model_names(self, names: str | Iterable[str] | None = None) -> list[str]:
        if names is None:
            return list(self._models)
        if isinstance(names, str):
            names = [names]
        unknown = [n for n in names if n not in self._models]
        if unknown:
            raise KeyError(f"unknown model names {unknown}; registered: {list(self._models)}")
        return list(names)

    def get_current_lr(self, names=None) -> float:
        name = self.get_model_names(names)[0]
        optim = self._optims[name]
        return float(optim.param_groups[0]["lr"]) if optim is not None else 0.0

    def set_model_mode(self, mode: str = "train", names=None) -> None:
        for name in self.get_model_names(names):
            if mode == "train":
                self._models[name].train()
            elif mode in ("test", "eval"):
                self._models[name].eval()
            else:
                raise ValueError(f"mode must be 'train' or 'test', got '{mode}'")

    def update_lr(self, names=None) -> None:
        for name in self.get_model_names(names):
            if self._scheds[name] is not None:
                self._scheds[name].step()

    def detect_anomaly(self, loss: torch.Tensor) -> None:
        """Raise ``NonFiniteLossError`` when ``loss`` is NaN or infinite."""
        check_finite_loss(float(loss.detach()), self.anomaly_context)

    def model_zero_grad(self, names=None) -> None:
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].zero_grad(set_to_none=True)

    def model_backward(self, loss: torch.Tensor) -> None:
        self.detect_anomaly(loss)
        loss.backward()

    def model_update(self, names=None) -> None:
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].step()

    def model_backward_and_update(self, loss: torch.Tensor, names=None) -> None:
        """Zero the gradients, back-propagate ``loss`` and step the optimisers of ``names``."""
        self.model_zero_grad(names)
        self.model_backward(loss)
        self.model_update(names)

    # ------------------------------------------------------------------ hooks to implement
    def build_model(self) -> None:
        raise NotImplementedError

    def forward_backward(self, batch: dict) -> dict[str, float]:
        """One optimisation step on ``batch``; returns a loss summary such as ``{"loss": 0.7, "acc": 81.2}``."""
        raise NotImplementedError

    def parse_batch_train(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def parse_batch_test(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def model_inference(self, input: torch.Tensor) -> torch.Tensor:
        return self.model(input)

    # ------------------------------------------------------------------ loops
    def before_epoch(self) -> None:
        pass

    def after_epoch(self) -> None:
        pass

    def run_epoch(self) -> dict[str, float]:
        """Train one epoch over ``self.train_loader_x``; returns the batch-size-weighted mean of each
        loss-summary entry. Summary values may be floats or device tensors: they are read on the host
        once, at the end of the epoch, where a non-finite ``loss`` raises ``NonFiniteLossError``."""
        self.set_model_mode("train")
        sums: dict[str, Any] = {}
        n = 0
        for batch in self.train_loader_x:
            summary = self.forward_backward(batch)
            bs = int(batch["label"].shape[0])
            for k, v in summary.items():
                sums[k] = sums.get(k, 0.0) + v * bs
            n += bs
        means = {k: float(v) / max(n, 1) for k, v in sums.items()}
        if "loss" in means:
            check_finite_loss(means["loss"], self.anomaly_context)
        return means

    def train(self, start_epoch: int = 0, max_epoch: int | None = None) -> list[dict[str, float]]:
        """Train from ``start_epoch`` to ``max_epoch`` (default ``OPTIM.MAX_EPOCH``), stepping the LR per epoch."""
        self.start_epoch = start_epoch
        self.max_epoch = self.max_epoch if max_epoch is None else max_epoch
        history = []
        for epoch in range(self.start_epoch, self.max_epoch):
            self.epoch = epoch
            self.before_epoch()
            history.append(self.run_epoch())
            self.update_lr()
            self.after_epoch()
        return history

    @torch.inference_mode()
    def test(self, split: str | None = None, loader=None) -> dict[str, float]:
        """Evaluate on ``loader`` (default: the ``val`` or ``test`` loader); returns the evaluator's metrics."""
        self.set_model_mode("test")
        if loader is None:
            split = split or self.cfg.TEST.SPLIT
            loader = self.val_loader if split == "val" and self.val_loader is not None else self.test_loader
        if loader is None:
            raise ValueError("no data loader to test on")
        self.evaluator.reset()
        for batch in loader:
            input, label = self.parse_batch_test(batch)
            self.evaluator.process(self.model_inference(input), label)
        return dict(self.evaluator.evaluate())

    # ------------------------------------------------------------------ persistence
    def save_model(self, epoch: int, directory: str) -> None:
        """Save each registered model's state as ``<directory>/<name>/model.pth.tar-<epoch>`` (atomically)."""
        for name, model in self._models.items():
            state = {"state_dict": model.state_dict(), "epoch": epoch}
            atomic_torch_save(state, os.path.join(directory, name, f"model.pth.tar-{epoch}"))

    def load_model(self, directory: str, epoch: int | None = None) -> None:
        """Load what ``save_model`` wrote (the latest epoch unless ``epoch`` is given)."""
        for name, model in self._models.items():
            folder = os.path.join(directory, name)
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"no saved model '{name}' under {directory}")
            if epoch is None:
                epochs = [int(f.rsplit("-", 1)[1]) for f in os.listdir(folder) if f.startswith("model.pth.tar-")]
                if not epochs:
                    raise FileNotFoundError(f"no model.pth.tar-* file in {folder}")
                epoch = max(epochs)
            path = os.path.join(folder, f"model.pth.tar-{epoch}")
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state["state_dict"], strict=False)


class TrainerX(SimpleTrainer):
    """A trainer for labelled data (Dassl's ``TrainerX``).

    The caller gives the ``classnames`` and provides the data loaders (the federated runtime does this per
    client), or a ``dm`` holding ``dataset.classnames`` and the loaders ``train_loader_x``, ``val_loader``,
    ``test_loader`` (Dassl's ``DataManager`` interface; FedTV has no data manager of its own).
    """

    def __init__(self, cfg, dm=None, classnames: list[str] | None = None):
        super().__init__(cfg)
        from dassl.evaluation import build_evaluator

        if dm is None and classnames is None:
            raise ValueError(f"{type(self).__name__} needs classnames (or a dm with dataset.classnames)")
        self.dm = dm
        if dm is not None:
            self.train_loader_x = dm.train_loader_x
            self.val_loader = dm.val_loader
            self.test_loader = dm.test_loader
            classnames = list(dm.dataset.classnames)
        self.classnames = list(classnames)
        self.num_classes = len(self.classnames)
        self.lab2cname = dict(enumerate(self.classnames))
        self.build_model()
        self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname)
