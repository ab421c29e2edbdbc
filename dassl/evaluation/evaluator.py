"""Evaluators: accumulate predictions batch by batch, then summarise them."""
from __future__ import annotations

import os.path as osp
from collections import OrderedDict, defaultdict

import numpy as np
import torch

from dassl.utils.registry import Registry

__all__ = ["EVALUATOR_REGISTRY", "Classification", "EvaluatorBase", "build_evaluator", "macro_f1_score"]

EVALUATOR_REGISTRY = Registry("EVALUATOR")


def build_evaluator(cfg, **kwargs):
    """Instantiate the evaluator registered as ``cfg.TEST.EVALUATOR`` with ``(cfg, **kwargs)``."""
    return EVALUATOR_REGISTRY.get(cfg.TEST.EVALUATOR)(cfg, **kwargs)


class EvaluatorBase:
    """Interface: ``reset()``, ``process(model_output, ground_truth)`` per batch, ``evaluate()``."""

    def __init__(self, cfg):
        self.cfg = cfg

    def reset(self) -> None:
        raise NotImplementedError

    def process(self, mo: torch.Tensor, gt: torch.Tensor) -> None:
        raise NotImplementedError

    def evaluate(self) -> OrderedDict:
        raise NotImplementedError


def macro_f1_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``y_true`` or ``y_pred``.

    Matches ``sklearn.metrics.f1_score(y_true, y_pred, average="macro")`` (F1 of a class with no
    true positive is 0). Returns a fraction in [0, 1]; 0.0 for empty inputs.
    """
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y_true.shape} vs {y_pred.shape}")
    if y_true.size == 0:
        return 0.0
    labels = np.union1d(y_true, y_pred)
    f1s = []
    for c in labels:
        tp = np.sum((y_true == c) & (y_pred == c))
        fp = np.sum((y_true != c) & (y_pred == c))
        fn = np.sum((y_true == c) & (y_pred != c))
        f1s.append(2.0 * tp / (2.0 * tp + fp + fn))  # denominator > 0: c occurs somewhere
    return float(np.mean(f1s))


@EVALUATOR_REGISTRY.register()
class Classification(EvaluatorBase):
    """Top-1 classification metrics.

    Args:
        cfg: the config (uses ``TEST.PER_CLASS_RESULT``, ``TEST.COMPUTE_CMAT``, ``OUTPUT_DIR``).
        lab2cname: ``{label: class name}`` used to name classes in the per-class report.
        verbose: print the summary in ``evaluate()`` (Dassl always prints).

    ``evaluate()`` returns an ``OrderedDict`` with ``accuracy``, ``error_rate`` and ``macro_f1``, all
    in percent, plus ``perclass_accuracy`` (the mean of the per-class accuracies over the classes
    present in the labels) when ``TEST.PER_CLASS_RESULT``; the per-class values are kept in
    ``self.per_class_accuracy`` (``{label: percent}``). With ``TEST.COMPUTE_CMAT`` the row-normalised
    confusion matrix (``self.cmat``, shape ``(C, C)``, rows = true labels) is also saved to
    ``<OUTPUT_DIR>/cmat.pt``.
    """

    def __init__(self, cfg, lab2cname: dict[int, str] | None = None, verbose: bool = True):
        super().__init__(cfg)
        self._lab2cname = dict(lab2cname) if lab2cname else {}
        self.verbose = verbose
        self._per_class = bool(cfg.TEST.PER_CLASS_RESULT)
        self._compute_cmat = bool(cfg.TEST.COMPUTE_CMAT)
        self.reset()

    def reset(self) -> None:
        self._correct = 0
        self._total = 0
        self._y_true: list[int] = []
        self._y_pred: list[int] = []
        self._per_class_res: dict[int, list[bool]] = defaultdict(list)
        self.per_class_accuracy: dict[int, float] = {}
        self.cmat: np.ndarray | None = None

    def process(self, mo: torch.Tensor, gt: torch.Tensor) -> None:
        """Accumulate one batch.

        Args:
            mo: logits or scores, shape ``(B, C)``; the prediction is the arg-max over ``C``.
            gt: integer labels, shape ``(B,)``.
        """
        if mo.dim() != 2:
            raise ValueError(f"model output must have shape (B, C), got {tuple(mo.shape)}")
        gt = torch.as_tensor(gt).reshape(-1)
        if gt.numel() != mo.shape[0]:
            raise ValueError(f"{mo.shape[0]} outputs but {gt.numel()} labels")
        pred = mo.detach().argmax(dim=1).cpu()
        gt = gt.detach().cpu().long()
        matches = pred.eq(gt)
        self._correct += int(matches.sum().item())
        self._total += int(gt.numel())
        self._y_true.extend(gt.tolist())
        self._y_pred.extend(pred.tolist())
        if self._per_class:
            for label, ok in zip(gt.tolist(), matches.tolist(), strict=True):
                self._per_class_res[label].append(bool(ok))

    def _name(self, label: int) -> str:
        return self._lab2cname.get(label, str(label))

    def evaluate(self) -> OrderedDict:
        """Summarise everything processed since the last ``reset()`` (see the class doc)."""
        if self._total == 0:
            raise RuntimeError("Classification.evaluate() called before any process()")
        results: OrderedDict[str, float] = OrderedDict()
        acc = 100.0 * self._correct / self._total
        err = 100.0 - acc
        macro_f1 = 100.0 * macro_f1_score(np.array(self._y_true), np.array(self._y_pred))
        results["accuracy"] = acc
        results["error_rate"] = err
        results["macro_f1"] = macro_f1
        lines = [
            "=> result",
            f"* total: {self._total:,}",
            f"* correct: {self._correct:,}",
            f"* accuracy: {acc:.1f}%",
            f"* error: {err:.1f}%",
            f"* macro_f1: {macro_f1:.1f}%",
        ]

        if self._per_class:
            lines.append("=> per-class result")
            for label in sorted(self._per_class_res):
                res = self._per_class_res[label]
                correct, total = sum(res), len(res)
                self.per_class_accuracy[label] = 100.0 * correct / total
                lines.append(
                    f"* class: {label} ({self._name(label)})\ttotal: {total:,}\tcorrect: {correct:,}\t"
                    f"acc: {self.per_class_accuracy[label]:.1f}%"
                )
            mean_acc = float(np.mean(list(self.per_class_accuracy.values())))
            results["perclass_accuracy"] = mean_acc
            lines.append(f"* average: {mean_acc:.1f}%")

        if self._compute_cmat:
            num_classes = max(max(self._y_true), max(self._y_pred), len(self._lab2cname) - 1) + 1
            cmat = np.zeros((num_classes, num_classes), dtype=np.float64)
            np.add.at(cmat, (np.array(self._y_true), np.array(self._y_pred)), 1.0)
            row_sums = cmat.sum(axis=1, keepdims=True)
            self.cmat = np.divide(cmat, row_sums, out=np.zeros_like(cmat), where=row_sums > 0)
            out_dir = self.cfg.OUTPUT_DIR
            if out_dir and osp.isdir(out_dir):
                save_path = osp.join(out_dir, "cmat.pt")
                torch.save(torch.from_numpy(self.cmat), save_path)
                lines.append(f"Confusion matrix is saved to {save_path}")

        if self.verbose:
            print("\n".join(lines))
        return results
