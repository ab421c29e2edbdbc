"""Threshold membership inference against one client's model of a finished run (DP-FPL's evaluation runs
the shadow-model attack, ``tools/mia_shadow.py``; this is the simpler check on the same members).

    python -m tools.mia RUN_DIR                 # the client with the most training data
    python -m tools.mia RUN_DIR --client 2 --out mia_client2.json
    python -m tools.mia RUN_DIR --all-clients   # every client, and their pooled scores
    python -m tools.mia RUN_DIR --untrained     # the same items scored by the untrained model (a baseline)

The run's own config, split (``split.json``) and final checkpoint are read back, so the target
client's model is exactly the one the run trained:

* **members**: the target client's training items (the ones its batches were drawn from);
* **non-members**: held-out items of the same classes: the target client's own test split.

The two sets are balanced (the larger one subsampled, seeded). Each item goes through the client's
personalised model with the test transform; two threshold attacks score it (higher = "member"):

* ``loss``: minus the cross-entropy of the true label (Yeom et al.'s loss attack);
* ``confidence``: the model's softmax probability of the true label.

For each attack: the ROC AUC (Mann-Whitney, ties counted half) and the best balanced accuracy over
all thresholds (an optimistic figure: the threshold is chosen on the evaluated items themselves).
0.5 = no leakage. ``--all-clients`` attacks every client (each against its own model) and adds the
AUC of all clients' scores pooled. ``--untrained`` scores the same items with the model the run started
from (no training data seen): what an attack gets from the items alone (e.g. held-out items that are
harder), the baseline to compare a trained model's AUC with. The report (``RUN_DIR/mia.json``, with
``--untrained`` ``RUN_DIR/mia_untrained.json``, unless ``--out``) also holds the run's ``privacy`` record.
Exit status 2 with one line on stderr for a folder that is not a finished run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

from federated.errors import CheckpointError, ConfigError, DataError, OutputError


def roc_auc(scores_in, scores_out) -> float:
    """P(score of a random member > score of a random non-member) + 0.5 P(tie) (the ROC AUC)."""
    a, b = np.asarray(scores_in, dtype=np.float64), np.asarray(scores_out, dtype=np.float64)
    if not len(a) or not len(b):
        raise ValueError("both members and non-members are needed")
    greater = (a[:, None] > b[None, :]).sum()
    ties = (a[:, None] == b[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(a) * len(b)))


def best_balanced_accuracy(scores_in, scores_out) -> float:
    """Max over thresholds ``t`` of ``(TPR + TNR) / 2`` for the rule "member iff score >= t"."""
    a, b = np.asarray(scores_in, dtype=np.float64), np.asarray(scores_out, dtype=np.float64)
    best = 0.5
    for t in np.unique(np.concatenate([a, b])):
        best = max(best, 0.5 * ((a >= t).mean() + (b < t).mean()))
    return float(best)


def attack_summary(scores_in, scores_out) -> dict:
    """``auc`` and ``best_balanced_accuracy`` of one attack's member / non-member scores."""
    return {"auc": roc_auc(scores_in, scores_out),
            "best_balanced_accuracy": best_balanced_accuracy(scores_in, scores_out)}


RUN_FILES = ("results.json", "split.json", "checkpoint.pt")


def read_finished_run(run_dir: str) -> dict:
    """``results.json`` of a finished run folder (no torch); ``OutputError`` naming what is missing."""
    for name in RUN_FILES:
        if not os.path.isfile(os.path.join(run_dir, name)):
            raise OutputError(f"{run_dir} is not a finished run's folder: {name} is missing")
    with open(os.path.join(run_dir, "results.json")) as f:
        return json.load(f)


def load_run(run_dir: str):
    """The run's config (its split file pinned), data, trainer and checkpoint."""
    from yacs.config import CfgNode as CN

    import datasets  # noqa: F401  (registers the datasets)
    import trainers  # noqa: F401  (registers the trainers)
    from dassl.engine import build_trainer
    from dassl.utils import set_random_seed
    from federated.checkpoint import load_checkpoint
    from federated.data import build_federated_data

    results = read_finished_run(run_dir)
    cfg = CN(results["config"])
    cfg.DATASET.SPLIT_FILE = os.path.join(run_dir, "split.json")
    cfg.OUTPUT_DIR = run_dir
    set_random_seed(int(cfg.SEED))  # as the run: its initial (untrained) prompts are drawn again
    data = build_federated_data(cfg)
    trainer = build_trainer(cfg, classnames=data.classnames)
    ckpt = load_checkpoint(run_dir, trainer, data.num_users)
    return cfg, results, data, trainer, ckpt


def client_logits(cfg, trainer, items) -> tuple[np.ndarray, np.ndarray]:
    """The loaded model's class logits ``(n, C)`` (float32, ``C`` = the run's classes) and the true labels
    ``(n,)`` of ``items``, with the test transform."""
    import torch

    from dassl.data import build_data_loader, build_transform

    loader = build_data_loader(cfg, items, int(cfg.DATALOADER.TEST.BATCH_SIZE), is_train=False,
                               transform=build_transform(cfg, is_train=False))
    logits, labels = [], []
    trainer.set_model_mode("test")
    with torch.inference_mode():
        context = trainer.model.eval_context()
        for batch in loader:
            images, y = trainer.parse_batch_test(batch)
            logits.append(trainer.model.logits(trainer.encode_images(images), context).float().cpu())
            labels.append(y.cpu())
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def _per_item(cfg, trainer, items) -> tuple[np.ndarray, np.ndarray]:
    """Cross-entropy of the true label and its softmax probability, per item ``(n,)`` each."""
    import torch

    logits, labels = (torch.from_numpy(a) for a in client_logits(cfg, trainer, items))
    log_p = logits.log_softmax(-1).gather(1, labels[:, None].long())[:, 0]
    return (-log_p).numpy(), log_p.exp().numpy()


def load_client_model(trainer, ckpt: dict, cid: int) -> None:
    """Load client ``cid``'s personalised model of the checkpoint: its own copy of the shared tensors when
    the run kept one (``client_global``), else the global ones, and its personal tensors."""
    client_global = {int(k): v for k, v in ckpt.get("client_global", {}).items()}
    trainer.load_state({**client_global.get(cid, ckpt["global"]), **ckpt["personal"][cid]})


def _client_scores(cfg, data, trainer, ckpt, cid: int, seed: int, untrained: dict | None) -> dict:
    """Balanced members / non-members of client ``cid`` and their losses and true-label probabilities."""
    members, held_out = list(data.train[cid]), list(data.test[cid])
    if not members or not held_out:
        raise DataError(f"client {cid} has {len(members)} training and {len(held_out)} test items: both are needed")
    rng = np.random.default_rng(seed)
    n = min(len(members), len(held_out))
    members = [members[i] for i in sorted(rng.choice(len(members), n, replace=False))]
    held_out = [held_out[i] for i in sorted(rng.choice(len(held_out), n, replace=False))]
    if untrained is not None:
        trainer.load_state(untrained)
    else:
        load_client_model(trainer, ckpt, cid)
    loss_in, prob_in = _per_item(cfg, trainer, members)
    loss_out, prob_out = _per_item(cfg, trainer, held_out)
    return {"client": cid, "members": n, "non_members": n, "loss_in": loss_in, "loss_out": loss_out,
            "prob_in": prob_in, "prob_out": prob_out}


def _attacks(s: dict) -> dict:
    return {"loss": attack_summary(-s["loss_in"], -s["loss_out"]),
            "confidence": attack_summary(s["prob_in"], s["prob_out"])}


def evaluate(run_dir: str, client: int | None = None, seed: int = 0, all_clients: bool = False,
             untrained: bool = False) -> dict:
    """The membership-inference report of ``run_dir`` (module docstring)."""
    cfg, results, data, trainer, ckpt = load_run(run_dir)
    sizes = [len(items) for items in data.train]
    cid = int(np.argmax(sizes)) if client is None else int(client)
    if not 0 <= cid < data.num_users:
        raise ConfigError(f"--client {cid}: the run has clients 0..{data.num_users - 1}")
    start = ({**trainer.get_state(trainer.shared_keys()), **trainer.initial_personal_state(cid)}
             if untrained else None)
    targets = [c for c in range(data.num_users) if data.train[c] and data.test[c]] if all_clients else [cid]
    scores = [_client_scores(cfg, data, trainer, ckpt, c, seed, start) for c in targets]
    report = {
        "run": os.path.abspath(run_dir), "trainer": cfg.TRAINER.NAME, "round": 0 if untrained else int(ckpt["round"]),
        "model": "untrained (the run's initial state)" if untrained else "the run's final checkpoint",
        "member_source": "the client's training items", "non_member_source": "the client's test items (same classes)",
        "clients": [{"client": s["client"], "members": s["members"], "non_members": s["non_members"],
                     "mean_loss": {"members": float(s["loss_in"].mean()), "non_members": float(s["loss_out"].mean())},
                     "attacks": _attacks(s)} for s in scores],
        "privacy": results.get("privacy"),
    }
    first = report["clients"][0]
    report.update(client=first["client"], members=first["members"], non_members=first["non_members"],
                  attacks=first["attacks"], mean_loss=first["mean_loss"])
    if all_clients:
        pooled = {k: np.concatenate([s[k] for s in scores]) for k in ("loss_in", "loss_out", "prob_in", "prob_out")}
        report.update(client="all", members=int(len(pooled["loss_in"])), non_members=int(len(pooled["loss_out"])),
                      attacks=_attacks(pooled),
                      mean_client_auc={a: float(np.mean([c["attacks"][a]["auc"] for c in report["clients"]]))
                                       for a in ("loss", "confidence")})
    return report


def number_arg(kind, zero: bool = False):
    """An argparse type: a finite number of ``kind`` above 0 (at least 0 with ``zero``: seeds)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not ((value >= 0 if zero else value > 0) and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text} must be a {'non-negative' if zero else 'positive'} number")
        return value
    return parse


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors as one line on stderr (exit status 2)."""

    def error(self, message: str):  # one line, exit status 2
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="output folder of a finished run")
    p.add_argument("--client", type=int, default=None, help="target client (default: the most training items)")
    p.add_argument("--out", default=None, help="report path (default RUN_DIR/mia.json)")
    p.add_argument("--seed", type=number_arg(int, zero=True), default=0, help="seed of the balancing subsample")
    p.add_argument("--all-clients", action="store_true", help="attack every client; pooled AUC as well")
    p.add_argument("--untrained", action="store_true", help="score with the run's initial (untrained) model")
    args = p.parse_args(argv)
    from dassl.utils import configure_logging

    configure_logging()  # before opacus (imported with the target) installs a root handler that repeats log lines
    try:
        report = evaluate(args.run_dir, args.client, args.seed, args.all_clients, args.untrained)
    except (ConfigError, DataError, CheckpointError, OutputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.out or os.path.join(args.run_dir, "mia_untrained.json" if args.untrained else "mia.json")
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    a = report["attacks"]
    print(f"{report['model']}: client {report['client']}, {report['members']} members / "
          f"{report['non_members']} non-members: "
          f"loss attack AUC {a['loss']['auc']:.3f} (best balanced accuracy {a['loss']['best_balanced_accuracy']:.3f}), "
          f"confidence attack AUC {a['confidence']['auc']:.3f}; report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
