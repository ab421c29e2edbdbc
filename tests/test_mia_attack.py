"""tools/mia_attack.py: the per-class shadow attack on synthetic softmax vectors (separable membership ->
high accuracy; identical member / non-member distributions -> chance), and its bookkeeping by hand."""
from __future__ import annotations

import numpy as np
import pytest

from tools import mia_attack as ma

FAST = ma.AttackSettings(epochs=30, batch_size=16)


def synthetic(rng, n_per_group: int, classes: int, member_margin: float, non_member_margin: float):
    """Softmax vectors ``(2 * n_per_group * classes, classes)``: each row's logits are N(0, 1) plus
    ``margin`` on its true class (members get ``member_margin``, non-members ``non_member_margin``)."""
    probs, member, labels = [], [], []
    for y in range(classes):
        for is_member, margin in ((1, member_margin), (0, non_member_margin)):
            logits = rng.normal(size=(n_per_group, classes))
            logits[:, y] += margin
            e = np.exp(logits - logits.max(1, keepdims=True))
            probs.append(e / e.sum(1, keepdims=True))
            member += [is_member] * n_per_group
            labels += [y] * n_per_group
    return np.concatenate(probs).astype(np.float32), np.array(member), np.array(labels)


def test_separable_membership_is_found():
    # members: true-class margin 6 (p_y ~ 0.98), non-members: 0 (p_y ~ 1/4): a threshold on p_y separates them
    rng = np.random.default_rng(0)
    shadow = synthetic(rng, 60, 4, 6.0, 0.0)
    target = synthetic(rng, 50, 4, 6.0, 0.0)
    report = ma.evaluate_class_attacks(ma.train_class_attacks(*shadow, FAST), *target)
    assert report["mean_class_accuracy"] > 0.95 and report["auc"] > 0.98
    assert [c["label"] for c in report["classes"]] == [0, 1, 2, 3] and not report["skipped"]
    assert report["members"] == report["non_members"] == 200


def test_identical_distributions_give_chance():
    # members and non-members drawn from the same distribution: whatever the classifiers learned from the
    # shadow rows, on fresh target rows their prediction is independent of membership: expected accuracy 0.5.
    # 4 classes x 600 target rows: standard error ~0.01, so 0.5 +- 0.05 is a 5-sigma band
    rng = np.random.default_rng(1)
    shadow = synthetic(rng, 60, 4, 2.0, 2.0)
    target = synthetic(rng, 300, 4, 2.0, 2.0)
    report = ma.evaluate_class_attacks(ma.train_class_attacks(*shadow, FAST), *target)
    assert abs(report["mean_class_accuracy"] - 0.5) < 0.05 and abs(report["auc"] - 0.5) < 0.05
    assert report["accuracy_se"] == pytest.approx(np.sqrt(0.25 / 600) / 2, rel=0.05)


class Rule:
    """A stand-in attack classifier: "member" iff the true-class probability exceeds 0.5 (or never)."""

    def __init__(self, label: int, never: bool = False):
        self.label, self.never = label, never

    def __call__(self, x):
        import torch

        member = torch.zeros(len(x)) if self.never else (x[:, self.label] > 0.5).float()
        return torch.stack([1 - member, member], 1)


def test_mean_over_classes_and_balancing_by_hand():
    # class 0: 2 members (p 0.9, 0.8), 3 non-members (p 0.1, 0.2, 0.3): balanced to 2 + 2, rule exact -> 1.0;
    # class 1: the rule never says "member" -> 0.5. Mean (1.0 + 0.5) / 2 = 0.75; class 2 has no classifier.
    p0 = [0.9, 0.8, 0.1, 0.2, 0.3]
    probs = np.array([[p, 1 - p, 0] for p in p0] + [[0, 0.9, 0.1], [0, 0.2, 0.8], [0, 0, 1]], dtype=np.float32)
    member = np.array([1, 1, 0, 0, 0, 1, 0, 1])
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 2])
    report = ma.evaluate_class_attacks({0: Rule(0), 1: Rule(1, never=True)}, probs, member, labels)
    assert [c["accuracy"] for c in report["classes"]] == [1.0, 0.5]
    assert report["mean_class_accuracy"] == 0.75
    assert report["members"] == report["non_members"] == 3
    assert report["skipped"] == [{"label": 2, "reason": "no shadow rows of this class (no attack classifier)"}]
    # SE by hand: class 0: 1 * 0 / 4 = 0, class 1: 0.25 / 2 -> sqrt(0.125) / 2
    assert report["accuracy_se"] == pytest.approx(np.sqrt(0.125) / 2)


def test_balanced_indices():
    rng = np.random.default_rng(0)
    idx = ma.balanced_indices(np.array([1, 0, 0, 0, 1, 0]), rng)
    assert len(idx) == 4 and {0, 4} <= set(idx.tolist())
    assert len(ma.balanced_indices(np.array([1, 1]), rng)) == 0


def test_best_and_final_selection_differ_only_in_which_epoch_is_kept():
    rng = np.random.default_rng(2)
    probs, member, _ = synthetic(rng, 40, 3, 2.0, 2.0)  # nothing to learn: the epoch losses wander

    def scores(epochs, select, lr=0.2):
        model = ma.train_attack(probs, member, ma.AttackSettings(epochs=epochs, batch_size=8, lr=lr, select=select), 3)
        return ma.attack_scores(model, probs)

    np.testing.assert_array_equal(scores(1, "best"), scores(1, "final"))  # one epoch: the same model
    np.testing.assert_array_equal(scores(6, "final"), scores(6, "final"))  # seeded
    # here the lowest-loss epoch of 8 is not the last one
    assert not np.allclose(scores(8, "best"), scores(8, "final"))
    assert ma.attack_mlp(3)[0].out_features == 32
    with pytest.raises(ValueError, match="select"):
        ma.train_attack(probs, member, ma.AttackSettings(select="last"), seed=0)
