"""What a run tells its user: a header saying what runs, one line per round, the final table and
where the results are.

The functions only format; the callers (``federated/run.py``, the round loops) log the lines on the
``fedtv`` logger, which ``dassl.utils.logger.configure_logging`` routes: INFO lines to the console and
to ``log.txt``, DEBUG lines (per-client detail) to ``log.txt`` only, and to the console too with
``--verbose``. Metrics are shown for every key of ``METRICS`` a record holds, so a new metric in the
results records needs one entry here.
"""
from __future__ import annotations

import math
import os

from federated.names import canonical_partition

#: (key in a round / zero-shot record, column title), in display order.
METRICS: tuple[tuple[str, str], ...] = (("local", "Local"), ("base", "Base"), ("novel", "Novel"), ("hm", "HM(B,N)"),
                                        ("hm_local_base_novel", "HM(L,B,N)"))


def _num(x) -> bool:
    return isinstance(x, int | float) and not (isinstance(x, float) and math.isnan(x))


def _path(path: str) -> str:
    """``path`` relative to the working directory when it lies below it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def protocol(cfg) -> str:
    """The evaluation protocol and client split of ``cfg`` in words."""
    sub = cfg.DATASET.SUBSAMPLE_CLASSES
    classes = {"base": "base-to-novel (clients train on the base classes)",
               "new": "the novel classes", "all": "all classes"}.get(sub, sub)
    split = canonical_partition(cfg.DATASET.PARTITION)
    if split in ("dirichlet", "hierarchical-dirichlet"):
        split = f"{split} (beta {cfg.DATASET.BETA:g})"
    split = f"{split} split"
    if cfg.DATASET.TARGET_DOMAIN != "":
        split += f", domain {cfg.DATASET.TARGET_DOMAIN} held out"
    return f"{classes}, {split}"


def weights_shown(cfg) -> str:
    """The CLIP weights ``cfg`` asks for, with the default spelled out (``tiny`` -> the shipped file)."""
    weights = str(cfg.MODEL.BACKBONE.WEIGHTS)
    if weights:
        return _path(weights) if os.path.exists(weights) else weights
    from clip.names import default_weights, normalize_backbone_name

    try:
        default = default_weights(normalize_backbone_name(cfg.MODEL.BACKBONE.NAME))
    except ValueError:
        return "default"
    return _path(default) if os.path.exists(default) else default


def header(cfg, evaluation: bool = False) -> list[str]:
    """What runs, from the config alone (printed before anything is built): method, dataset, protocol,
    clients, shots, rounds, CLIP and its weights, output folder."""
    shots = "all images" if int(cfg.DATASET.NUM_SHOTS) <= 0 else f"{cfg.DATASET.NUM_SHOTS} shots"
    frac = "" if float(cfg.FED.FRAC) >= 1 else f" ({float(cfg.FED.FRAC):g} of them per round after the first)"
    schedule = "" if evaluation else f", {cfg.OPTIM.ROUND} rounds x {cfg.OPTIM.MAX_EPOCH} local epochs"
    return [
        f"{'evaluating ' if evaluation else ''}{cfg.TRAINER.NAME} on {cfg.DATASET.NAME}: {protocol(cfg)}",
        f"{cfg.DATASET.USERS} clients{frac}, {shots} per class{schedule}",
        f"CLIP {cfg.MODEL.BACKBONE.NAME} (weights: {weights_shown(cfg)})",
        f"output: {_path(cfg.OUTPUT_DIR)}",
    ]


def ready_line(data, device: str, precision: str, execution: str | None, seconds: float) -> str:
    """What was built: classes, clients and their images, the device; ``execution``: how the clients
    train (None for an evaluation)."""
    sizes = [len(t) for t in data.train]
    images = f" ({min(sizes)}-{max(sizes)} training images each)" if sizes and min(sizes) != max(sizes) else (
        f" ({sizes[0]} training images each)" if sizes else "")
    train = f"; clients {execution}" if execution else ""
    novel = data.novel_classnames if data.novel_classnames != data.classnames else None
    classes = f"{len(data.classnames)} classes" + (f" (+ {len(novel)} novel test classes)" if novel else "")
    return (f"ready in {seconds:.0f} s: {classes}, {data.num_users} clients{images}, "
            f"{device} ({precision}){train}")


def metrics_text(record: dict) -> str:
    """``Local 83.50  Base 79.20  Novel 77.03  HM(B,N) 78.10  HM(L,B,N) 79.80`` for the metrics ``record`` holds."""
    return "  ".join(f"{title} {record[key]:6.2f}" for key, title in METRICS if _num(record.get(key)))


def zero_shot_line(record: dict) -> str:
    return f"zero-shot CLIP (hand-crafted prompts): {metrics_text(record)}"


def round_line(record: dict, rounds: int) -> str:
    """One round: its metrics (when evaluated), the clients' mean training loss and its seconds."""
    width = len(str(rounds))
    parts = [f"round {record['round']:>{width}}/{rounds}:"]
    shown = metrics_text(record)
    parts.append(shown if shown else "(not evaluated)")
    if _num(record.get("train_loss")):
        parts.append(f"loss {record['train_loss']:.3f}")
    if _num(record.get("seconds")):
        parts.append(f"{record['seconds']:.1f} s")
    return "  ".join(parts)


def client_train_line(round_idx: int, cid: int, summary: dict, images: int) -> str:
    """Per-client training detail (log.txt, ``--verbose``)."""
    stats = "  ".join(f"{k} {v:.4g}" for k, v in summary.items() if _num(v))
    return f"  round {round_idx} client {cid}: {stats} ({images} training images)"


def client_eval_line(cid: int, metrics: dict) -> str:
    """Per-client evaluation detail (log.txt, ``--verbose``)."""
    shown = "  ".join(f"{k} {v:.2f}" for k, v in metrics.items() if _num(v))
    return f"  client {cid}: {shown or 'no test images'}"


def where(output_dir: str, log_path: str | None) -> str:
    """The files a run leaves, for its last line."""
    parts = [f"results: {_path(os.path.join(output_dir, 'results.json'))}"]
    plot = os.path.join(output_dir, "accuracy.png")
    if os.path.isfile(plot):
        parts.append(f"plot: {_path(plot)}")
    if log_path:
        parts.append(f"log: {_path(log_path)}")
    return ", ".join(parts)
