"""The runs under an output root, and the statistics the report tables are made of.

A run is identified by its key (``dataset``, ``method``, ``seed`` and the table's other axes:
``variant``, ``domain``, ``rank``, ``shots``, ``partition``). The runs a table *should* hold come from
``OUTPUT_ROOT/manifest.json`` (written by the ``scripts/``); without a manifest, every
``results.json`` under the root is a run and its key is read from its config. A run listed in the
manifest without a finished ``results.json`` is kept, as missing: tables show it, never drop it.

Statistics over seeds: mean and *sample* standard deviation (ddof = 1, as the papers' +- values:
FedPGP Table 4's 41.54 +- 41.15 over three clients is the sample std); no std for one value.
"""
from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass

from federated.config import REPO_ROOT
from tools.run_folder import MANIFEST, RUN_INFO, run_state


@dataclass
class RunRecord:
    """One run: ``key`` labels, its folder, ``results`` (None unless finished) and ``run_info.json``."""

    key: dict[str, str]
    path: str
    results: dict | None
    info: dict | None

    @property
    def finished(self) -> bool:
        return self.results is not None

    def final(self, metric: str) -> float | None:
        """``final[metric]`` (local, base, novel, hm) of a finished run."""
        if self.results is None:
            return None
        value = (self.results.get("final") or {}).get(metric)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)

    def last_evaluated(self) -> dict:
        """The last round record that holds an evaluation ({} when none)."""
        for r in reversed((self.results or {}).get("rounds", [])):
            if r.get("local") is not None:
                return r
        return {}


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _load(key: dict, path: str) -> RunRecord:
    finished = run_state(path) == "finished"
    return RunRecord(key=key, path=path, results=_read_json(os.path.join(path, "results.json")) if finished else None,
                     info=_read_json(os.path.join(path, RUN_INFO)))


def dataset_stems() -> dict[str, str]:
    """``DATASET.NAME`` -> the dataset config's file stem (``OxfordPets`` -> ``oxford_pets``)."""
    folder = os.path.join(REPO_ROOT, "configs", "datasets")
    out: dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".yaml"):
            continue
        with open(os.path.join(folder, name)) as f:
            for line in f:
                if line.strip().startswith("NAME:"):
                    ds = line.split(":", 1)[1].strip().strip("'\"")
                    stem = name[:-5]
                    if ds not in out or len(stem) > len(out[ds]):  # oxford_pets over its alias oxfordpets
                        out[ds] = stem
                    break
    return out


def key_from_config(results: dict) -> dict[str, str]:
    """A run's key read from its resolved config (runs made without a script's manifest)."""
    cfg = results["config"]
    ds = cfg["DATASET"]
    trainer = cfg["TRAINER"]["NAME"]
    key = {"dataset": dataset_stems().get(ds["NAME"], ds["NAME"]), "method": trainer, "seed": str(cfg["SEED"]),
           "backbone": cfg["MODEL"]["BACKBONE"]["NAME"], "shots": str(ds["NUM_SHOTS"]),
           "partition": {"iid": "iid", "homo": "iid"}.get(ds["PARTITION"], "noniid")}
    if ds.get("TARGET_DOMAIN"):
        key["domain"] = str(ds["TARGET_DOMAIN"])
    node = cfg["TRAINER"].get(trainer.upper())
    if isinstance(node, dict) and "BOTTLENECK" in node:
        key["rank"] = str(node["BOTTLENECK"])
    key["variant"] = trainer
    return key


def load_runs(root: str) -> tuple[str | None, list[RunRecord]]:
    """``(table kind from the manifest or None, runs)`` under ``root``."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"output root {root} does not exist")
    manifest = _read_json(os.path.join(root, MANIFEST))
    if manifest is not None:
        runs = [_load(entry["key"], os.path.join(root, rel)) for rel, entry in manifest["runs"].items()]
        return manifest.get("table"), runs
    runs = []
    for folder, _, files in sorted(os.walk(root)):
        if "results.json" in files:
            results = _read_json(os.path.join(folder, "results.json"))
            if results and "config" in results:
                runs.append(_load(key_from_config(results), folder))
    return None, runs


# ------------------------------------------------------------------ statistics
@dataclass
class Cell:
    """A table cell: the values found (one per finished seed) out of ``expected`` runs."""

    values: list[float]
    expected: int
    partial: bool = False  # a derived value computed from incomplete parts

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def text(self, std: bool = True) -> str:
        """``85.31 ± 0.42``, with ``(2/3)`` when runs are missing; ``missing (0/3)`` when none finished."""
        if not self.values:
            return f"missing (0/{self.expected})" if self.expected else "missing"
        out = f"{self.mean:.2f}"
        if std and self.std is not None:
            out += f" ± {self.std:.2f}"
        if len(self.values) < self.expected:
            out += f" ({len(self.values)}/{self.expected})"
        if self.partial:
            out += " (partial)"
        return out


def derived(value: float | None, parts: list[Cell]) -> Cell:
    """A value computed from other cells (HM of the mean Base and Novel, an average over datasets):
    missing when it cannot be computed, marked ``(partial)`` when a part it comes from misses runs."""
    complete = all(c.values and len(c.values) == c.expected for c in parts)
    return Cell([] if value is None else [value], 1, partial=value is not None and not complete)


def cell_of(runs: list[RunRecord], getter) -> Cell:
    """Cell of ``getter(run)`` over ``runs`` (the seeds); unfinished runs count as expected, not found."""
    values = [v for v in (getter(r) for r in runs if r.finished) if v is not None]
    return Cell(values, len(runs))


def select(runs: list[RunRecord], **fixed: str) -> list[RunRecord]:
    """The runs whose key holds every ``fixed`` value."""
    return [r for r in runs if all(r.key.get(k) == v for k, v in fixed.items())]


def ordered(runs: list[RunRecord], field: str) -> list[str]:
    """The values of ``field`` in the order the runs list them (the script's order = the paper's)."""
    out: list[str] = []
    for r in runs:
        v = r.key.get(field)
        if v is not None and v not in out:
            out.append(v)
    return out
