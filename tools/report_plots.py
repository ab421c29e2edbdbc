"""The report's PNG plots, per dataset: accuracy per round per method, per-client accuracy, and
accuracy against the bytes each client communicated. Lines / bars are seed means of finished runs;
a line's label is the run key without dataset, seed and backbone (e.g. ``FedPGP`` or ``rank8 4shots``).
Zero-shot CLIP (a method that trains nothing, or else the runs' ``zero_shot`` reference) is a dashed
horizontal line across the rounds labelled "zero-shot CLIP", not a single point."""
from __future__ import annotations

import os
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from federated.results import SUMMARIES  # noqa: E402
from tools.report_data import RunRecord, ordered, select  # noqa: E402

HIDDEN = ("dataset", "seed", "backbone")


def line_label(key: dict[str, str]) -> str:
    return " ".join(f"{k}{v}" if k in ("rank", "shots") else v for k, v in key.items() if k not in HIDDEN)


def _groups(runs: list[RunRecord]) -> dict[str, list[RunRecord]]:
    out: dict[str, list[RunRecord]] = {}
    for r in runs:
        if r.finished:
            out.setdefault(line_label(r.key), []).append(r)
    return out


def _mean_curve(runs: list[RunRecord], metric: str) -> tuple[list[int], list[float], list[float]]:
    """Rounds, seed-mean ``metric`` and seed-mean cumulative bytes per client (up + down) at those rounds."""
    by_round: dict[int, list[float]] = {}
    by_bytes: dict[int, list[float]] = {}
    for r in runs:
        total = 0.0
        for rec in r.results["rounds"]:
            total += (rec.get("bytes_up_per_client") or 0) + (rec.get("bytes_down_per_client") or 0)
            if rec.get(metric) is not None:
                by_round.setdefault(rec["round"], []).append(rec[metric])
                by_bytes.setdefault(rec["round"], []).append(total)
    xs = sorted(by_round)
    return xs, [statistics.fmean(by_round[x]) for x in xs], [statistics.fmean(by_bytes[x]) for x in xs]


def _trains_nothing(r: RunRecord) -> bool:
    return (r.results.get("params") or {}).get("total", 1) == 0


def zero_shot_lines(groups: dict[str, list[RunRecord]], metric: str) -> dict[str, float]:
    """Horizontal reference lines: label -> seed-mean ``final[metric]`` of each group that trains nothing
    (ZeroshotCLIP: one evaluation, no rounds to draw); without such a group, the runs' own zero-shot
    reference (``results["zero_shot"]``, ``FED.ZS_REFERENCE``) averaged over the runs, under the label ""."""
    lines = {}
    for label, g in groups.items():
        vals = [r.final(metric) for r in g if _trains_nothing(r) and r.final(metric) is not None]
        if vals and len(vals) == len(g):
            lines[label] = statistics.fmean(vals)
    if not lines:
        vals = [(r.results.get("zero_shot") or {}).get(metric) for g in groups.values() for r in g]
        vals = [v for v in vals if v is not None]
        if vals:
            lines[""] = statistics.fmean(vals)
    return lines


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_dataset(runs: list[RunRecord], dataset: str, metric: str, out_dir: str) -> list[str]:
    """The three plots of one dataset; returns the written paths (none when no run finished)."""
    groups = _groups(select(runs, dataset=dataset))
    if not groups:
        return []
    metric = metric if any(r.final(metric) is not None for g in groups.values() for r in g) else "local"
    name = SUMMARIES[metric][0] if metric in SUMMARIES else metric.capitalize()
    paths = []
    references = zero_shot_lines(groups, metric)
    for kind in ("rounds", "bytes"):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for label, g in groups.items():
            if label in references:
                continue
            xs, ys, bs = _mean_curve(g, metric)
            ax.plot(xs if kind == "rounds" else [max(b, 1.0) for b in bs], ys, marker="o", label=label)
        for i, (label, y) in enumerate(references.items()):
            ax.axhline(y, color="0.35", linestyle=("--", ":", "-.")[i % 3], linewidth=1.2,
                       label="zero-shot CLIP" if label in ("", "ZeroshotCLIP") else f"zero-shot CLIP ({label})")
        if kind == "rounds":
            ax.set(xlabel="round", ylabel=f"{name} accuracy (%)", title=f"{dataset}: {name} per round")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            ax.set(xlabel="bytes communicated per client (up + down, cumulative)", xscale="log",
                   ylabel=f"{name} accuracy (%)", title=f"{dataset}: accuracy vs bytes communicated")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        paths.append(_save(fig, os.path.join(out_dir, f"{dataset}_{kind}.png")))
    paths.append(plot_clients(groups, dataset, os.path.join(out_dir, f"{dataset}_clients.png")))
    return paths


def plot_clients(groups: dict[str, list[RunRecord]], dataset: str, path: str) -> str:
    """Grouped bars: each client's final Local accuracy (seed mean), one colour per line label."""
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(len(groups), 1)
    for i, (label, g) in enumerate(groups.items()):
        per: dict[str, list[float]] = {}
        for r in g:
            for cid, acc in (r.last_evaluated().get("local_per_client") or {}).items():
                per.setdefault(cid, []).append(acc)
        cids = sorted(per, key=int)
        ax.bar([int(c) + i * width for c in cids], [statistics.fmean(per[c]) for c in cids], width, label=label)
    ax.set(xlabel="client", ylabel="Local accuracy (%)", title=f"{dataset}: per-client accuracy (last round)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_all(runs: list[RunRecord], metric: str, out_dir: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    return [p for ds in ordered(runs, "dataset") for p in plot_dataset(runs, ds, metric, out_dir)]
