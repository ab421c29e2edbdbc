"""The shadow-model membership-inference attack (Shokri et al. 2017) as DP-FPL evaluates it: one attack
classifier per class, trained on softmax vectors whose membership is known, applied to a target's.

Arrays in, numbers out (no run folders here; ``tools/mia_shadow.py`` produces the arrays):

* ``probs`` ``(n, C)``: a model's softmax vector of each item over the run's ``C`` classes;
* ``member`` ``(n,)``: 1 if the model that produced the row trained on the item, else 0;
* ``labels`` ``(n,)``: the item's true class (which attack classifier it belongs to).

Attack classifier of class ``y`` (DP-FPL's): ``Linear(C, 32) - ReLU - Linear(32, 2) - Sigmoid``, trained
with cross-entropy on those two outputs (the sigmoid before the cross-entropy is the published choice),
Adam, learning rate 0.01, 200 epochs of shuffled mini-batches (published: batch size 1), on the shadow
rows of class ``y`` with as many members as non-members (the larger group subsampled). ``select "best"``
keeps the parameters of the epoch with the lowest summed training loss, what the published training
loop meant to keep; as written it keeps a reference to the live model, i.e. the last epoch's
parameters: ``select "final"``.

Evaluation on the target's rows, class by class: as many members as non-members (subsampled, seeded),
"member" iff the member output exceeds the other; the metric is the mean over classes of the attack
accuracy (0.5 = no leakage), with its standard error, and the ROC AUC of the score
``output[1] - output[0]`` over every evaluated row.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from tools.mia import roc_auc

HIDDEN = 32
SELECT = ("best", "final")


@dataclass(frozen=True)
class AttackSettings:
    """How each class's attack classifier is trained (defaults: the published ones)."""

    epochs: int = 200
    lr: float = 0.01
    batch_size: int = 1
    select: str = "best"
    seed: int = 0


#: DP-FPL's attack training (the lowest-loss epoch kept).
PUBLISHED = AttackSettings()


def attack_mlp(num_classes: int):
    """DP-FPL's attack classifier: softmax vector ``(B, C)`` -> two outputs in (0, 1) ``(B, 2)``
    (index 1 = member)."""
    from torch import nn

    return nn.Sequential(nn.Linear(num_classes, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2), nn.Sigmoid())


def balanced_indices(member: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices (sorted) of every row of the smaller membership group and as many rows of the other, drawn
    without replacement; empty when one group is empty."""
    ins, outs = np.flatnonzero(member == 1), np.flatnonzero(member == 0)
    n = min(len(ins), len(outs))
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate([rng.choice(ins, n, replace=False), rng.choice(outs, n, replace=False)]))


def train_attack(probs: np.ndarray, member: np.ndarray, settings: AttackSettings, seed: int):
    """One attack classifier trained on ``probs`` ``(n, C)`` with targets ``member`` ``(n,)`` (module
    docstring); initialisation and shuffling seeded by ``seed``, the global torch RNG untouched."""
    import torch

    if settings.select not in SELECT:
        raise ValueError(f"select must be one of {SELECT}, not {settings.select!r}")
    x = torch.as_tensor(probs, dtype=torch.float32)
    y = torch.as_tensor(member, dtype=torch.long)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = attack_mlp(x.shape[1])
        gen = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    best_loss, best_state = float("inf"), None
    for _ in range(settings.epochs):
        total = 0.0
        for idx in torch.randperm(len(x), generator=gen).split(settings.batch_size):
            loss = loss_fn(model(x[idx]), y[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(idx)
        if total < best_loss:
            best_loss, best_state = total, copy.deepcopy(model.state_dict())
    if settings.select == "best" and best_state is not None:
        model.load_state_dict(best_state)
    return model.eval()


def attack_scores(model, probs: np.ndarray) -> np.ndarray:
    """``output[member] - output[non-member]`` per row ``(n,)``: > 0 means "member"."""
    import torch

    with torch.inference_mode():
        out = model(torch.as_tensor(probs, dtype=torch.float32))
    return (out[:, 1] - out[:, 0]).numpy().astype(np.float64)


def train_class_attacks(probs: np.ndarray, member: np.ndarray, labels: np.ndarray,
                        settings: AttackSettings = PUBLISHED) -> dict[int, object]:
    """One attack classifier per class that has both members and non-members among the shadow rows,
    each trained on a balanced subsample of its class (seeded by ``settings.seed`` and the class)."""
    models = {}
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        keep = rows[balanced_indices(member[rows], np.random.default_rng([settings.seed, int(label)]))]
        if len(keep):
            seed = settings.seed * 100_003 + int(label)
            models[int(label)] = train_attack(probs[keep], member[keep], settings, seed)
    return models


def evaluate_class_attacks(models: dict[int, object], probs: np.ndarray, member: np.ndarray, labels: np.ndarray,
                           seed: int = 0) -> dict:
    """The attack on the target's rows, class by class (module docstring).

    Returns ``{"mean_class_accuracy", "accuracy_se", "auc", "members", "non_members", "classes": [{"label",
    "members", "non_members", "accuracy"}], "skipped": [{"label", "reason"}]}``; ``accuracy_se`` is the
    binomial standard error of the mean over classes, ``sqrt(sum_c a_c (1 - a_c) / n_c) / K``.
    """
    classes, skipped, score_in, score_out = [], [], [], []
    for label in np.unique(labels):
        label = int(label)
        rows = np.flatnonzero(labels == label)
        keep = rows[balanced_indices(member[rows], np.random.default_rng([seed, label]))]
        if label not in models:
            skipped.append({"label": label, "reason": "no shadow rows of this class (no attack classifier)"})
            continue
        if not len(keep):
            skipped.append({"label": label, "reason": "the target has no members or no non-members of this class"})
            continue
        s, m = attack_scores(models[label], probs[keep]), member[keep]
        classes.append({"label": label, "members": int(m.sum()), "non_members": int((m == 0).sum()),
                        "accuracy": float(((s > 0) == (m == 1)).mean())})
        score_in.append(s[m == 1])
        score_out.append(s[m == 0])
    if not classes:
        raise ValueError("no class of the target has both members and non-members and an attack classifier")
    acc = np.array([c["accuracy"] for c in classes])
    n = np.array([c["members"] + c["non_members"] for c in classes])
    return {"mean_class_accuracy": float(acc.mean()),
            "accuracy_se": float(np.sqrt((acc * (1 - acc) / n).sum()) / len(classes)),
            "auc": roc_auc(np.concatenate(score_in), np.concatenate(score_out)),
            "members": int(sum(c["members"] for c in classes)),
            "non_members": int(sum(c["non_members"] for c in classes)),
            "classes": classes, "skipped": skipped}
