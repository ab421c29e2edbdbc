"""Plots of a run's ``results.json``: Local / Base / Novel / HM(B,N) / HM(L,B,N) accuracy per round."""
from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CURVES = (("local", "Local"), ("base", "Base"), ("novel", "Novel"), ("hm", "HM(B,N)"),
          ("hm_local_base_novel", "HM(L,B,N)"))


def plot_accuracy(results: dict, path: str) -> str | None:
    """Write accuracy-per-round curves (with the zero-shot reference as dashed lines) to ``path`` (PNG).

    Returns the path, or None when no round was evaluated.
    """
    rounds = [r for r in results.get("rounds", []) if any(r.get(k) is not None for k, _ in CURVES)]
    if not rounds:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    zero_shot = results.get("zero_shot") or {}
    for (key, label), colour in zip(CURVES, ("C0", "C1", "C2", "C3", "C4"), strict=True):
        xs = [r["round"] for r in rounds if r.get(key) is not None]
        ys = [r[key] for r in rounds if r.get(key) is not None]
        if xs:
            ax.plot(xs, ys, marker="o", color=colour, label=label)
        if zero_shot.get(key) is not None:
            ax.axhline(zero_shot[key], color=colour, linestyle="--", linewidth=1, label=f"{label} (zero-shot)")
    cfg = results.get("config", {})
    ax.set_title(f"{cfg.get('TRAINER', {}).get('NAME', '')} on {cfg.get('DATASET', {}).get('NAME', '')}")
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    """``python -m utils.plots OUTPUT_DIR``: (re)draw ``OUTPUT_DIR/accuracy.png``."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("output_dir")
    args = parser.parse_args(argv)
    with open(os.path.join(args.output_dir, "results.json")) as f:
        results = json.load(f)
    print(plot_accuracy(results, os.path.join(args.output_dir, "accuracy.png")))


if __name__ == "__main__":
    main()
