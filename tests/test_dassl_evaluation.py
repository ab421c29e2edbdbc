"""Tests for dassl.evaluation against hand-computed values."""
import pytest
import torch

from dassl.config import get_cfg_default
from dassl.evaluation import EVALUATOR_REGISTRY, Classification, build_evaluator, macro_f1_score


def _logits(preds, num_classes):
    """(B, C) logits whose arg-max is ``preds``."""
    out = torch.zeros(len(preds), num_classes)
    out[torch.arange(len(preds)), torch.tensor(preds)] = 1.0
    return out


def _evaluator(**test_keys):
    cfg = get_cfg_default()
    for k, v in test_keys.items():
        setattr(cfg.TEST, k, v)
    return build_evaluator(cfg, lab2cname={0: "cat", 1: "dog", 2: "fox", 3: "owl"}, verbose=False)


def test_accuracy_error_macro_f1_over_two_batches():
    ev = _evaluator()
    assert isinstance(ev, Classification) and "Classification" in EVALUATOR_REGISTRY
    labels = [0, 0, 1, 1, 2, 2]
    preds = [0, 1, 1, 1, 0, 2]
    ev.process(_logits(preds[:4], 4), torch.tensor(labels[:4]))
    ev.process(_logits(preds[4:], 4), torch.tensor(labels[4:]))
    res = ev.evaluate()
    assert list(res) == ["accuracy", "error_rate", "macro_f1"]
    assert res["accuracy"] == pytest.approx(400 / 6)
    assert res["error_rate"] == pytest.approx(200 / 6)
    # F1 = 2tp / (2tp + fp + fn): class 0: 2/4, class 1: 4/5, class 2: 2/3
    assert res["macro_f1"] == pytest.approx(100 * (0.5 + 0.8 + 2 / 3) / 3)


def test_macro_f1_counts_classes_only_predicted():
    # class 3 never occurs in the labels but is predicted once: F1 0 (sklearn's average="macro")
    assert macro_f1_score([0, 0], [0, 3]) == pytest.approx((2 / 3 + 0.0) / 2)
    assert macro_f1_score([1, 2, 2], [1, 2, 2]) == pytest.approx(1.0)


def test_reset_and_per_class_result():
    ev = _evaluator(PER_CLASS_RESULT=True)
    ev.process(_logits([2, 2], 4), torch.tensor([0, 1]))
    ev.reset()
    ev.process(_logits([0, 0, 0, 0], 4), torch.tensor([0, 0, 0, 1]))
    res = ev.evaluate()
    assert res["accuracy"] == pytest.approx(75.0)
    assert ev.per_class_accuracy == pytest.approx({0: 100.0, 1: 0.0})
    assert res["perclass_accuracy"] == pytest.approx(50.0)
    # class 0: tp 3 fp 1 fn 0 -> 6/7; class 1: 0
    assert res["macro_f1"] == pytest.approx(100 * (6 / 7) / 2)


def test_verbose_prints_with_class_names(capsys):
    cfg = get_cfg_default()
    cfg.TEST.PER_CLASS_RESULT = True
    ev = Classification(cfg, lab2cname={0: "cat", 1: "dog"})
    ev.process(_logits([0, 1], 2), torch.tensor([0, 0]))
    ev.evaluate()
    out = capsys.readouterr().out
    assert "* accuracy: 50.0%" in out and "(cat)" in out


def test_confusion_matrix_is_row_normalised_and_saved(tmp_path):
    cfg = get_cfg_default()
    cfg.TEST.COMPUTE_CMAT = True
    cfg.OUTPUT_DIR = str(tmp_path)
    ev = Classification(cfg, lab2cname={0: "a", 1: "b", 2: "c"}, verbose=False)
    ev.process(_logits([0, 1, 1, 1], 3), torch.tensor([0, 0, 1, 1]))
    ev.evaluate()
    expected = torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.equal(torch.load(tmp_path / "cmat.pt"), expected)


def test_errors():
    ev = _evaluator()
    with pytest.raises(RuntimeError, match="before any process"):
        ev.evaluate()
    with pytest.raises(ValueError, match=r"shape \(B, C\)"):
        ev.process(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="2 outputs but 3 labels"):
        ev.process(torch.zeros(2, 4), torch.zeros(3, dtype=torch.long))
    cfg = get_cfg_default()
    cfg.TEST.EVALUATOR = "Nope"
    with pytest.raises(KeyError, match="registered: .*Classification"):
        build_evaluator(cfg)
