"""The papers' table layouts, built from runs (``tools/report_data.py``), as :class:`Block` s.

A table kind (``TABLES``) turns the runs into blocks, one per dataset (or per dataset and method),
each a grid of :class:`Cell` s with row and column labels in the paper's layout. Every cell also
names where the published value of the same number lies (``ref``: a path into
``tools/published/*.json``) so that the report can put ours and the paper's side by side.

Conventions (as the papers): the base-to-novel tables' HM is FedPGP's, HM(Local, Base, Novel) =
3 / (1/L + 1/B + 1/N) (it reproduces 50 of the 51 HM cells of FedPGP's Tables 1 and 6 to 0.01, the
"Average over 5 datasets" rows included, from the printed Local / Base / Novel; HM(Base, Novel) matches
none), from the seed-averaged Local / Base / Novel (the per-seed HM averaged over seeds is the column
``HM/seed``); an average over datasets averages the per-dataset seed means and takes the HM of those
averages; leave-one-domain-out detail (Table 4): mean +- std over the clients (source domains). The
base-to-novel tables' last block, "Every summary", gives the three summaries the field reports
(``federated.results.SUMMARIES``) from the same seed-averaged Local / Base / Novel, and the global
model's Base / Novel / HM(Base, Novel) where a method has one.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from federated.results import SUMMARIES, harmonic_mean, summaries
from tools.report_data import Cell, RunRecord, cell_of, derived, ordered, select

B2N_COLUMNS = ["Local", "Base", "Novel", "HM", "HM/seed"]
SUMMARY_COLUMNS = [short for short, _ in SUMMARIES.values()] + ["Global Base", "Global Novel", "Global HM"]


@dataclass
class Block:
    """One grid: ``cells[i][j]`` for ``rows[i]`` x ``columns[j]``; ``refs[i][j]``: published-value path."""

    title: str
    row_header: str
    rows: list[str]
    columns: list[str]
    cells: list[list[Cell | str]]
    refs: list[list[tuple | None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _final(metric: str) -> Callable[[RunRecord], float | None]:
    return lambda r: r.final(metric)


def _table_hm(local: float | None, base: float | None, novel: float | None) -> float | None:
    """The base-to-novel tables' HM: HM(Local, Base, Novel), FedPGP's."""
    return summaries(local, base, novel)["hm_local_base_novel"]


def _per_seed_hm(r: RunRecord) -> float | None:
    return _table_hm(r.final("local"), r.final("base"), r.final("novel"))


def _b2n_cells(runs: list[RunRecord]) -> list[Cell]:
    local, base, novel = (cell_of(runs, _final(m)) for m in ("local", "base", "novel"))
    return [local, base, novel, derived(_table_hm(local.mean, base.mean, novel.mean), [local, base, novel]),
            cell_of(runs, _per_seed_hm)]


def base_to_novel(runs: list[RunRecord], row: str = "method", table: str = "base2novel") -> list[Block]:
    """Table 1 layout: per dataset, rows = methods (or variants), Local / Base / Novel / HM(L,B,N); then the
    average over datasets (each row's per-dataset means averaged; HM from the averaged Local, Base, Novel)."""
    datasets, labels = ordered(runs, "dataset"), ordered(runs, row)
    blocks = []
    per: dict[tuple[str, str], list[Cell]] = {}
    for ds in datasets:
        cells, refs = [], []
        for label in labels:
            per[ds, label] = _b2n_cells(select(runs, dataset=ds, **{row: label}))
            cells.append(per[ds, label])
            refs.append([(table, ds, label, m) for m in ("local", "base", "novel", "hm")] + [None])
        blocks.append(Block(f"{ds}", row, labels, B2N_COLUMNS, cells, refs))
    if len(datasets) > 1:
        cells, refs = [], []
        for label in labels:
            parts = [per[ds, label] for ds in datasets]
            means = []
            for j in range(3):
                vals = [p[j].mean for p in parts]
                means.append(derived(None if None in vals else statistics.fmean(vals), [p[j] for p in parts]))
            hm = derived(_table_hm(*(m.mean for m in means)), [p[j] for p in parts for j in range(3)])
            hms = [p[4].mean for p in parts]
            mean_hm = derived(None if None in hms else statistics.fmean(hms), [p[4] for p in parts])
            cells.append([*means, hm, mean_hm])
            refs.append([(table, "average", label, m) for m in ("local", "base", "novel", "hm")] + [None])
        blocks.append(Block(f"Average over {len(datasets)} datasets", row, labels, B2N_COLUMNS, cells, refs,
                            ["HM: from the averaged Local, Base and Novel; "
                             "HM/seed: the mean of the datasets' per-seed HM"]))
    for b in blocks:
        b.notes.append("mean ± sample std over seeds; (k/n): only k of n runs finished; HM/seed: per-seed HM averaged")
        b.notes.append("HM = HM(Local, Base, Novel) = 3 / (1/L + 1/B + 1/N), FedPGP's HM column; "
                       "HM(Base, Novel) and the others: 'Every summary'")
    blocks.append(_summaries_block(runs, datasets, labels, row, per))
    return blocks


def _summaries_block(runs: list[RunRecord], datasets: list[str], labels: list[str], row: str,
                     per: dict[tuple[str, str], list[Cell]]) -> Block:
    """Rows ``dataset / label``: the three summaries from the seed-averaged Local / Base / Novel, then the
    global model's Base / Novel (seed means) and their HM."""
    rows, cells = [], []
    for ds in datasets:
        for label in labels:
            local, base, novel = per[ds, label][:3]
            values = summaries(local.mean, base.mean, novel.mean)
            chosen = select(runs, dataset=ds, **{row: label})
            g_base, g_novel = (cell_of(chosen, _final(m)) for m in ("global_base", "global_novel"))
            rows.append(f"{ds} / {label}")
            finished = [r for r in chosen if r.finished]
            no_global = bool(finished) and all(r.final("global_base") is None for r in finished)
            global_cells = ["—"] * 3 if no_global else [  # the method has no separate global model
                g_base, g_novel, derived(harmonic_mean(g_base.mean, g_novel.mean), [g_base, g_novel])]
            cells.append([*(derived(values[k], [local, base, novel]) for k in SUMMARIES), *global_cells])
    notes = [f"{short}: {text}" for short, text in SUMMARIES.values()]
    notes += ["each from the seed-averaged Local / Base / Novel (as HM in the tables above)",
              "Global: the global model alone (shared tensors; FedPGP / FedTV sigma, FedOTP's global prompts) on the "
              "base / novel classes; —: the method has no separate global model"]
    return Block("Every summary", f"dataset / {row}", rows, SUMMARY_COLUMNS, cells,
                 [[None] * len(SUMMARY_COLUMNS) for _ in rows], notes)


def leave_one_domain_out(runs: list[RunRecord]) -> list[Block]:
    """Table 2: per dataset, rows = methods, columns = held-out domains + Avg (Local = mean over clients);
    Table 4: per dataset and method, rows = held-out domain, columns = the clients' (source) domains."""
    blocks = []
    for ds in ordered(runs, "dataset"):
        dsruns = select(runs, dataset=ds)
        domains, methods = ordered(dsruns, "domain"), ordered(dsruns, "method")
        if not domains:
            raise ValueError(f"{ds}: no run has a held-out domain (DATASET.TARGET_DOMAIN): not a leave-one-domain-out "
                             f"table")
        cells, refs = [], []
        for m in methods:
            row = [cell_of(select(dsruns, method=m, domain=d), _final("local")) for d in domains]
            vals = [c.mean for c in row]
            row.append(derived(None if None in vals else statistics.fmean(vals), row))
            cells.append(row)
            refs.append([("lodo", ds, m, d) for d in domains] + [("lodo", ds, m, "avg")])
        blocks.append(Block(f"{ds}: accuracy on the held-out domain (Table 2)", "method", methods, [*domains, "Avg"],
                            cells, refs, ["mean ± sample std over seeds of the mean over clients"]))
        for m in methods:
            cells, refs = [], []
            for target in domains:
                chosen = select(dsruns, method=m, domain=target)
                row: list[Cell | str] = []
                for src in domains:
                    row.append("—" if src == target else cell_of(
                        chosen, lambda r, s=src: (r.last_evaluated().get("local_per_domain") or {}).get(s)))
                means = [c.mean for c in row if isinstance(c, Cell) and c.mean is not None]
                n_src = sum(isinstance(c, Cell) for c in row)
                avg = Cell(means, n_src) if means else Cell([], n_src)
                row.append(avg)
                cells.append(row)
                refs.append([("lodo_detail", ds, m, target, s) for s in domains] + [("lodo", ds, m, target)])
            blocks.append(Block(f"{ds}, {m}: each client (source domain) on the held-out domain (Table 4)",
                                "held-out", domains, [*domains, "Avg"], cells, refs,
                                ["Avg: mean ± sample std over the clients"]))
    return blocks


def per_dataset(runs: list[RunRecord], row: str, table: str, title: str, metric: str = "local") -> list[Block]:
    """One block: rows = ``row`` values, columns = datasets, cells = ``final[metric]`` mean ± std over seeds."""
    datasets, labels = ordered(runs, "dataset"), ordered(runs, row)
    cells = [[cell_of(select(runs, dataset=ds, **{row: lab}), _final(metric)) for ds in datasets] for lab in labels]
    refs = [[(table, ds, lab) for ds in datasets] for lab in labels]
    return [Block(title, row, labels, datasets, cells, refs, ["mean ± sample std over seeds"])]


def fedpgp_ablation(runs: list[RunRecord]) -> list[Block]:
    """Table 6 (Local / Base / Novel / HM of the variants) and Table 7 (Local per dataset)."""
    t6 = base_to_novel(runs, row="variant", table="fedpgp_ablation")
    t7 = per_dataset(runs, "variant", "fedpgp_negative", "Table 7: Local accuracy per dataset")
    for b in t6:
        b.title = f"Table 6, {b.title}"
    return t6 + t7


def rank_shots(runs: list[RunRecord]) -> list[Block]:
    """Table 11: per dataset, rows = rank, columns = shots, Local accuracy."""
    blocks = []
    for ds in ordered(runs, "dataset"):
        dsruns = select(runs, dataset=ds)
        ranks, shots = ordered(dsruns, "rank"), ordered(dsruns, "shots")
        cells = [[cell_of(select(dsruns, rank=r, shots=s), _final("local")) for s in shots] for r in ranks]
        refs = [[("rank_shots", ds, r, s) for s in shots] for r in ranks]
        blocks.append(Block(f"{ds}: Local accuracy, rank (rows) x shots (columns)", "rank", ranks,
                            [f"{s} shots" for s in shots], cells, refs, ["mean ± sample std over seeds"]))
    return blocks


def flora(runs: list[RunRecord]) -> list[Block]:
    """FLoRA: one block per client split (IID, non-IID), rows = methods, columns = datasets + Avg."""
    blocks = []
    for part in ordered(runs, "partition"):
        b = per_dataset(select(runs, partition=part), "method", "flora", f"{part}: Local accuracy")[0]
        for row, refs in zip(b.cells, b.refs, strict=True):
            vals = [c.mean for c in row]
            parts = list(row)
            row.append(derived(None if None in vals else statistics.fmean(vals), parts))
            refs[:] = [(*r, part) for r in refs] + [None]
        b.columns = [*b.columns, "Avg"]
        blocks.append(b)
    return blocks


def _bytes(n: float | None) -> str:
    if n is None:
        return "missing"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def run_bytes(r: RunRecord) -> float:
    """Bytes communicated over the whole run: every round, every sampled client, up and down."""
    return float(sum(len(x.get("clients") or []) * ((x.get("bytes_up_per_client") or 0)
                                                    + (x.get("bytes_down_per_client") or 0))
                     for x in r.results["rounds"]))


def training_seconds(r: RunRecord) -> float | None:
    """Median seconds of the rounds that did not evaluate (all rounds when every round evaluated)."""
    rounds = r.results["rounds"]
    plain = [x["seconds"] for x in rounds if x.get("local") is None] or [x["seconds"] for x in rounds]
    return statistics.median(plain) if plain else None


def _first(runs: list[RunRecord], fn) -> float | None:
    vals = [fn(r) for r in runs if r.finished]
    vals = [v for v in vals if v is not None]
    return statistics.fmean(vals) if vals else None


def cost(runs: list[RunRecord], reference: str = "FedFFT") -> list[Block]:
    """FLoRA's cost table: parameters, bytes, seconds per training round, peak memory, ratios to FedFFT."""
    blocks = []
    columns = ["shared params", "personal params", "up/client/round", "s/round", "peak memory", "faster x",
               "less memory x", "Local"]
    for ds in ordered(runs, "dataset"):
        dsruns = select(runs, dataset=ds)
        methods = ordered(dsruns, "method")
        stats = {}
        for m in methods:
            mr = select(dsruns, method=m)
            stats[m] = {"secs": _first(mr, training_seconds),
                        "mem": _first(mr, lambda r: (r.info or {}).get("peak_memory_bytes")),
                        "shared": _first(mr, lambda r: r.results["params"]["shared"]),
                        "personal": _first(mr, lambda r: r.results["params"]["personal"]),
                        "up": _first(mr, lambda r: r.results["rounds"][0]["bytes_up_per_client"]),
                        "local": cell_of(mr, _final("local"))}
        ref = stats.get(reference, {})
        cells = []
        for m in methods:
            s = stats[m]
            faster = Cell([ref["secs"] / s["secs"]] if ref.get("secs") and s["secs"] else [], 1)
            less = Cell([ref["mem"] / s["mem"]] if ref.get("mem") and s["mem"] else [], 1)
            cells.append([_num(s["shared"]), _num(s["personal"]), _bytes(s["up"]),
                          "missing" if s["secs"] is None else f"{s['secs']:.3f}",
                          "missing" if s["mem"] is None else _bytes(s["mem"]), faster, less, s["local"]])
        kinds = {(r.info or {}).get("memory_kind") for r in dsruns if r.info}
        # the ratios next to a paper's claim (tools/published/flora.json: FLoRA vs full fine-tuning)
        refs = [[("cost", m, col) if col in ("faster x", "less memory x") else None for col in columns]
                for m in methods]
        blocks.append(Block(f"{ds}: cost per client-round", "method", methods, columns, cells, refs,
                            [f"ratios: {reference} / method (> 1: cheaper than {reference}); "
                             f"peak memory: {', '.join(sorted(k for k in kinds if k)) or 'not recorded'}"]))
    return blocks


def _num(x: float | None) -> str:
    return "missing" if x is None else f"{x:,.0f}"


def communication(runs: list[RunRecord], reference: str = "FLoRA") -> list[Block]:
    """CE-LoRA's communication table: what each method sends and the accuracy it reaches."""
    blocks = []
    columns = ["shared params", "up/client/round", "down/client/round", "total (run)", f"less than {reference} x",
               "Local"]
    for ds in ordered(runs, "dataset"):
        dsruns = select(runs, dataset=ds)
        methods = ordered(dsruns, "method")
        totals = {m: _first(select(dsruns, method=m), run_bytes) for m in methods}
        cells = []
        for m in methods:
            mr = select(dsruns, method=m)
            ref = totals.get(reference)
            cells.append([_num(_first(mr, lambda r: r.results["params"]["shared"])),
                          _bytes(_first(mr, lambda r: r.results["rounds"][0]["bytes_up_per_client"])),
                          _bytes(_first(mr, lambda r: r.results["rounds"][0]["bytes_down_per_client"])),
                          _bytes(totals[m]), f"{ref / totals[m]:.1f}" if ref and totals[m] else "-",
                          cell_of(mr, _final("local"))])
        blocks.append(Block(f"{ds}: communication", "method", methods, columns, cells,
                            [[None] * len(columns) for _ in methods],
                            ["total: every round, every sampled client, up + down (float32 tensors)"]))
    return blocks


#: table kind -> (builder, the per-round metric of its accuracy curves: HM(L,B,N) when Base / Novel exist)
TABLES: dict[str, tuple[Callable[[list[RunRecord]], list[Block]], str]] = {
    "base2novel": (base_to_novel, "hm_local_base_novel"),
    "lodo": (leave_one_domain_out, "local"),
    "dirichlet": (lambda runs: per_dataset(runs, "method", "dirichlet", "Table 5: Local accuracy"), "local"),
    "fedpgp_ablation": (fedpgp_ablation, "hm_local_base_novel"),
    "rank_shots": (rank_shots, "local"),
    "fedtv_ablation": (lambda runs: base_to_novel(runs, row="variant", table="fedtv_ablation"), "hm_local_base_novel"),
    "flora": (flora, "local"),
    "cost": (cost, "local"),
    "communication": (communication, "local"),
    "dpfpl_privacy": (lambda runs: per_dataset(runs, "variant", "dpfpl_privacy",
                                               "DP-FPL: Local accuracy per privacy budget"), "local"),
}
