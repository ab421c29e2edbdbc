"""Results of a federated run: ``results.json``, ``metrics.csv``, TensorBoard scalars and a table.

``results.json`` holds the resolved config (``config``), the zero-shot reference
(``zero_shot``), one entry per round (``rounds``) and a ``final`` block with ``local``, ``base``,
``novel`` and ``hm`` accuracies in percent (null where not measured).
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Any

CSV_FIELDS = ["round", "clients", "train_loss", "train_acc", "local", "local_std", "local_macro_f1", "base", "novel",
              "hm", "seconds", "bytes_up_per_client", "bytes_down_per_client"]


def harmonic_mean(base: float | None, novel: float | None) -> float | None:
    """HM = 2BN/(B+N) (None when either is missing; 0 when both are 0)."""
    if base is None or novel is None:
        return None
    return 0.0 if base + novel == 0 else 2.0 * base * novel / (base + novel)


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def cfg_to_dict(cfg) -> dict:
    """A yacs node as plain JSON-able dicts / lists."""
    from yacs.config import CfgNode

    def convert(node: Any) -> Any:
        if isinstance(node, CfgNode):
            return {k: convert(v) for k, v in node.items()}
        if isinstance(node, tuple | list):
            return [convert(v) for v in node]
        return node

    return convert(cfg)


class ResultsWriter:
    """Collects round records and writes every results file after each round."""

    def __init__(self, output_dir: str, cfg, results: dict | None = None, tensorboard: bool = True):
        self.output_dir = output_dir
        os.makedirs(output_dir, exist_ok=True)
        self.results = results or {"config": cfg_to_dict(cfg), "zero_shot": None, "rounds": [], "final": None}
        self.results["config"] = cfg_to_dict(cfg)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(os.path.join(output_dir, "tensorboard"))
            except ImportError:  # pragma: no cover - tensorboard is a requirement
                self._tb = None

    def set_zero_shot(self, record: dict) -> None:
        self.results["zero_shot"] = record
        self.write()

    def add_round(self, record: dict) -> None:
        self.results["rounds"].append(record)
        if self._tb is not None:
            step = record["round"]
            for key in ("local", "base", "novel", "hm", "train_loss", "train_acc"):
                if record.get(key) is not None:
                    self._tb.add_scalar(f"fed/{key}", record[key], step)
            for cid, acc in (record.get("local_per_client") or {}).items():
                self._tb.add_scalar(f"client/{cid}/local", acc, step)
            self._tb.flush()
        self.results["final"] = self.final_block()
        self.write()

    def final_block(self) -> dict:
        """Accuracies of the last evaluated round, plus best and mean of the last 5 evaluated rounds."""
        evaluated = [r for r in self.results["rounds"] if r.get("local") is not None or r.get("base") is not None
                     or r.get("novel") is not None]
        if not evaluated:
            return {"local": None, "base": None, "novel": None, "hm": None}
        last = evaluated[-1]
        locals_ = [r["local"] for r in evaluated if r.get("local") is not None]
        tail = locals_[-5:]
        return {
            "round": last["round"],
            "local": last.get("local"),
            "local_std": last.get("local_std"),
            "local_macro_f1": last.get("local_macro_f1"),
            "base": last.get("base"),
            "novel": last.get("novel"),
            "hm": last.get("hm"),
            "best_local": max(locals_) if locals_ else None,
            "mean_last5_local": sum(tail) / len(tail) if tail else None,
        }

    def write(self) -> None:
        _atomic_write_text(os.path.join(self.output_dir, "results.json"), json.dumps(self.results, indent=2))
        rows = [{k: r.get(k) for k in CSV_FIELDS} for r in self.results["rounds"]]
        for row in rows:
            row["clients"] = " ".join(str(c) for c in row["clients"] or [])
        path = os.path.join(self.output_dir, "metrics.csv")
        tmp = f"{path}.tmp.{os.getpid()}"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _fmt(x: float | None) -> str:
    return "  -  " if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:6.2f}"


def format_table(results: dict) -> str:
    """A text table of Local / Base / Novel / HM: the zero-shot reference, then every evaluated round."""
    lines = [f"{'round':>10} | {'Local':>6} | {'Base':>6} | {'Novel':>6} | {'HM':>6}", "-" * 48]
    zs = results.get("zero_shot")
    if zs:
        lines.append(f"{'zero-shot':>10} | {_fmt(zs.get('local'))} | {_fmt(zs.get('base'))} | "
                     f"{_fmt(zs.get('novel'))} | {_fmt(zs.get('hm'))}")
    for r in results.get("rounds", []):
        if r.get("local") is None and r.get("base") is None and r.get("novel") is None:
            continue
        lines.append(f"{r['round']:>10} | {_fmt(r.get('local'))} | {_fmt(r.get('base'))} | "
                     f"{_fmt(r.get('novel'))} | {_fmt(r.get('hm'))}")
    return "\n".join(lines)
