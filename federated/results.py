"""Results of a federated run: ``results.json``, ``metrics.csv``, TensorBoard scalars and a table.

``results.json`` holds the resolved config (``config``), the zero-shot reference
(``zero_shot``), one entry per round (``rounds``) and a ``final`` block with ``local``, ``base``,
``novel`` accuracies and the three base-to-novel summaries of ``SUMMARIES`` in percent (null where not
measured); methods with a global model besides the personalised ones also hold ``global_base``,
``global_novel`` and ``global_hm`` (the shared tensors alone on the base / novel classes). A resumed
run adds ``resumes`` (after which round, and the allowed config changes ``{key: [saved, new]}``).
Non-finite numbers are written as null: the file is always valid JSON.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Any

from federated.run_dir import write_text, writing

#: The base-to-novel summaries the field reports: key -> (short name, definition and who reports it).
SUMMARIES: dict[str, tuple[str, str]] = {
    "hm": ("HM(B,N)", "HM(Base, Novel) = 2BN / (B + N): CoOp, CoCoOp, MaPLe, KgCoOp (centralised base-to-novel)"),
    "hm_local_base_novel": ("HM(L,B,N)", "HM(Local, Base, Novel) = 3 / (1/L + 1/B + 1/N): FedPGP (its HM column), "
                            "FedTPG, FedMVP, pFedMMA"),
    "mean_local_hm": ("(L+HM)/2", "(Local + HM(Base, Novel)) / 2: FedMGP"),
}
#: The global model's accuracies (methods with global and personalised models).
GLOBAL_METRICS = ("global_base", "global_novel", "global_hm")

CSV_FIELDS = ["round", "clients", "train_loss", "train_acc", "local", "local_std", "local_macro_f1", "base", "novel",
              *SUMMARIES, *GLOBAL_METRICS, "seconds", "bytes_up_per_client", "bytes_down_per_client"]


def harmonic_mean(base: float | None, novel: float | None) -> float | None:
    """HM = 2BN/(B+N) (None when either is missing; 0 when both are 0)."""
    if base is None or novel is None:
        return None
    return 0.0 if base + novel == 0 else 2.0 * base * novel / (base + novel)


def summaries(local: float | None, base: float | None, novel: float | None) -> dict[str, float | None]:
    """The three summaries of ``SUMMARIES`` from Local, Base and Novel accuracy (percent); each is None
    when one of its parts is missing, 0 when one of the harmonic mean's parts is 0."""
    hm = harmonic_mean(base, novel)
    parts = (local, base, novel)
    if None in parts:
        hm3 = None
    else:
        hm3 = 0.0 if min(parts) == 0 else 3.0 / sum(1.0 / x for x in parts)
    return {"hm": hm, "hm_local_base_novel": hm3,
            "mean_local_hm": None if local is None or hm is None else (local + hm) / 2.0}


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (not measured), so that it is valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


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
        with writing(output_dir):
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

    def record_resume(self, after_round: int, config_changes: dict[str, list]) -> None:
        """Note in ``results["resumes"]`` that the run continued after ``after_round`` rounds, with the
        allowed config changes ``{key: [saved, new]}`` (``federated.checkpoint.check_resume_config``)."""
        self.results.setdefault("resumes", []).append({"after_round": int(after_round),
                                                       "config_changes": config_changes})

    def set_zero_shot(self, record: dict) -> None:
        self.results["zero_shot"] = record
        self.write()

    def add_round(self, record: dict) -> None:
        self.results["rounds"].append(record)
        if self._tb is not None:
            step = record["round"]
            for key in ("local", "base", "novel", *SUMMARIES, *GLOBAL_METRICS, "train_loss", "train_acc"):
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
        best = max(locals_) if locals_ else None
        at_best = [r for r in evaluated if best is not None and r.get("local") == best]
        return {
            "round": last["round"],
            "local": last.get("local"),
            "local_std": last.get("local_std"),
            "local_macro_f1": last.get("local_macro_f1"),
            "base": last.get("base"),
            "novel": last.get("novel"),
            **{k: last.get(k) for k in (*SUMMARIES, *GLOBAL_METRICS)},
            "best_local": best,
            # the round the published code's save.pt holds (saved whenever the mean Local is >= the best so far,
            # so the last of the best rounds), whose Base / Novel the published evaluation reports
            "at_best_local": {k: at_best[-1].get(k) for k in ("round", "local", "base", "novel", *SUMMARIES,
                                                             *GLOBAL_METRICS)} if at_best else None,
            "mean_last5_local": sum(tail) / len(tail) if tail else None,
        }

    def write(self) -> None:
        write_text(os.path.join(self.output_dir, "results.json"),
                   json.dumps(json_safe(self.results), indent=2, allow_nan=False))
        rows = [{k: r.get(k) for k in CSV_FIELDS} for r in self.results["rounds"]]
        for row in rows:
            row["clients"] = " ".join(str(c) for c in row["clients"] or [])
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        write_text(os.path.join(self.output_dir, "metrics.csv"), text.getvalue())

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _fmt(x: float | None) -> str:
    return "  -  " if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:6.2f}"


def format_table(results: dict) -> str:
    """A text table: the zero-shot reference, then every evaluated round: Local, Base, Novel and the three
    summaries (the caption line names them); the global model's Base / Novel / HM below, when measured."""
    columns = [("local", "Local"), ("base", "Base"), ("novel", "Novel"),
               *((key, short) for key, (short, _) in SUMMARIES.items())]
    widths = [max(6, len(title)) for _, title in columns]

    def row(label: str, record: dict) -> str:
        cells = (f"{_fmt(record.get(k)):>{w}}" for (k, _), w in zip(columns, widths, strict=True))
        return f"{label:>10} | " + " | ".join(cells)

    head = f"{'round':>10} | " + " | ".join(f"{title:>{w}}" for (_, title), w in zip(columns, widths, strict=True))
    lines = [head, "-" * len(head)]
    zs = results.get("zero_shot")
    if zs:
        lines.append(row("zero-shot", zs))
    evaluated = [r for r in results.get("rounds", [])
                 if r.get("local") is not None or r.get("base") is not None or r.get("novel") is not None]
    lines += [row(str(r["round"]), r) for r in evaluated]
    lines.append("; ".join(f"{short} = {text.split(':')[0]}" for short, text in SUMMARIES.values()))
    last = evaluated[-1] if evaluated else {}
    if any(last.get(k) is not None for k in GLOBAL_METRICS):
        lines.append(f"global model (shared tensors alone), round {last['round']}: Base {_fmt(last.get('global_base'))}"
                     f"  Novel {_fmt(last.get('global_novel'))}  HM(B,N) {_fmt(last.get('global_hm'))}")
    if results.get("privacy"):
        lines.append(privacy_line(results["privacy"]))
    return "\n".join(lines)


def privacy_line(privacy: dict) -> str:
    """One line of a run's differential privacy record (``results.json`` ``privacy``, ``federated/fedsgd.py``)."""
    if not privacy.get("private"):
        return "privacy: none (no clipping, no noise)"
    head = (f"privacy: noise multiplier {privacy['noise_multiplier']:.3g}, clip {privacy['clip_norm']:g}, "
            f"{privacy['steps']} noisy steps at sampling rate {privacy['sample_rate']:.3g}, delta {privacy['delta']:g}")
    if not privacy.get("guarantee"):
        return head + ": no accounted epsilon (published NOISE_AS_EPSILON calibration)"

    def eps(key: str) -> str:
        return f"{privacy[key]:.3g}"

    return (head + f": epsilon global prompt {eps('epsilon_global')}, low-rank factors {eps('epsilon_local')}, "
            f"personalised model {eps('epsilon_personalised_model')} ({privacy['accountant']} accountant)")
