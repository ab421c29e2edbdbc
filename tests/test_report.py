"""tools.report on hand-made runs: the numbers in the tables are the runs' numbers (hand-computed means,
sample stds, FedPGP's HM(Local, Base, Novel) of the seed-averaged accuracies), missing runs show as missing,
published values sit next to ours, and every file and plot is written."""
from __future__ import annotations

import csv
import json
import os

import pytest

from tools.experiments import Run as ERun
from tools.experiments import update_manifest
from tools.report import main as report_main
from tools.report import write_report
from tools.report_data import Cell
from tools.run_folder import run_state


def fake_run(path: str, final: dict, rounds: int = 2, seconds: float = 1.0, per_client=None, per_domain=None,
             up: int = 100, down: int = 200, clients=(0, 1), shared: int = 25, trainer: str = "PromptFL") -> None:
    """A finished results.json with ``final`` accuracies in every evaluated round."""
    os.makedirs(path, exist_ok=True)
    recs = []
    for r in range(1, rounds + 1):
        rec = {"round": r, "clients": list(clients), "seconds": seconds * r, "bytes_up_per_client": up,
               "bytes_down_per_client": down, **final, "local_per_client": per_client or {"0": final["local"]},
               "local_per_domain": per_domain}
        recs.append(rec)
    results = {"config": {"OPTIM": {"ROUND": rounds}, "SEED": 1, "TRAINER": {"NAME": trainer},
                          "DATASET": {"NAME": "ToyWorld", "NUM_SHOTS": 4, "PARTITION": "pathological",
                                      "TARGET_DOMAIN": ""}, "MODEL": {"BACKBONE": {"NAME": "tiny"}}},
               "zero_shot": None, "rounds": recs, "final": {"round": rounds, **final},
               "params": {"shared": shared, "personal": 0, "total": shared}}
    with open(os.path.join(path, "results.json"), "w") as f:
        json.dump(results, f)


def hm3(local: float, base: float, novel: float) -> float:
    """HM(Local, Base, Novel), by hand."""
    return 3 / (1 / local + 1 / base + 1 / novel)


def manifest(root: str, table: str, keys: list[dict]) -> list[str]:
    runs = [ERun(key=k, argv=[], output_dir=os.path.join(root, *k.values())) for k in keys]
    update_manifest(root, table, table, runs)
    return [r.output_dir for r in runs]


def values(out: str, table: str) -> dict[tuple[str, str, str], dict]:
    with open(os.path.join(out, f"{table}_values.csv")) as f:
        return {(r["block"], r["row"], r["column"]): r for r in csv.DictReader(f)}


def test_base2novel_numbers_equal_the_runs_and_missing_runs_show(tmp_path):
    root = str(tmp_path / "runs")
    keys = [{"dataset": ds, "method": m, "seed": s} for ds in ("oxford_pets", "dtd") for m in ("PromptFL", "FedPGP")
            for s in ("1", "2")]
    dirs = dict(zip([tuple(k.values()) for k in keys], manifest(root, "base2novel", keys), strict=True))
    fake_run(dirs["oxford_pets", "PromptFL", "1"], {"local": 90.0, "base": 80.0, "novel": 60.0, "hm": 68.5714})
    fake_run(dirs["oxford_pets", "PromptFL", "2"], {"local": 94.0, "base": 70.0, "novel": 70.0, "hm": 70.0})
    fake_run(dirs["oxford_pets", "FedPGP", "1"], {"local": 96.65, "base": 95.87, "novel": 97.33, "hm": 96.6})
    fake_run(dirs["dtd", "PromptFL", "1"], {"local": 70.0, "base": 60.0, "novel": 40.0, "hm": 48.0})
    fake_run(dirs["dtd", "PromptFL", "2"], {"local": 72.0, "base": 62.0, "novel": 42.0, "hm": 50.0})
    # oxford_pets FedPGP seed 2 and both dtd FedPGP runs never finished (one is interrupted)
    os.makedirs(dirs["dtd", "FedPGP", "1"])
    with open(os.path.join(dirs["dtd", "FedPGP", "1"], "results.json"), "w") as f:
        json.dump({"config": {"OPTIM": {"ROUND": 2}}, "rounds": [{"round": 1}], "final": {"local": 1.0}}, f)
    assert run_state(dirs["dtd", "FedPGP", "1"]) == "partial"
    out = str(tmp_path / "report")
    report = write_report(root, "base2novel", out)
    v = values(out, "base2novel")
    pf = v["oxford_pets", "PromptFL", "Local"]
    assert float(pf["mean"]) == pytest.approx(92.0) and float(pf["std"]) == pytest.approx(2.8284271, abs=1e-6)
    # HM = FedPGP's HM(Local, Base, Novel) from the seed-averaged Local (92), Base (75) and Novel (65), not the
    # mean of the per-seed HMs, and not HM(Base, Novel)
    assert float(v["oxford_pets", "PromptFL", "HM"]["mean"]) == pytest.approx(hm3(92, 75, 65))
    per_seed = (hm3(90, 80, 60) + hm3(94, 70, 70)) / 2
    assert float(v["oxford_pets", "PromptFL", "HM/seed"]["mean"]) == pytest.approx(per_seed)
    # the average over datasets averages the per-dataset means, its HM is that of the averages
    avg = "Average over 2 datasets"
    assert float(v[avg, "PromptFL", "Base"]["mean"]) == pytest.approx((75 + 61) / 2)
    assert float(v[avg, "PromptFL", "HM"]["mean"]) == pytest.approx(hm3((92 + 71) / 2, 68, (65 + 41) / 2))
    md = open(os.path.join(out, "base2novel.md")).read()
    assert "| FedPGP | 96.65 (1/2) |" in md  # one seed of two: shown, marked
    assert "missing (0/2)" in md  # dtd FedPGP: nothing finished, never dropped
    assert v[avg, "FedPGP", "Local"]["mean"] == ""  # no average over an incomplete dataset
    assert sorted(report["missing"]) == sorted([dirs["oxford_pets", "FedPGP", "2"], dirs["dtd", "FedPGP", "1"],
                                                dirs["dtd", "FedPGP", "2"]])
    # ours vs published: FedPGP Table 1 OxfordPets Local 96.65
    comp = open(os.path.join(out, "base2novel_vs_published.md")).read()
    assert "| oxford_pets | FedPGP | Local | 96.65 (1/2) | 96.65 | +0.00 |" in comp
    # FedPGP's published HM 96.61 is HM(Local, Base, Novel) of its published 96.65 / 95.87 / 97.33
    assert "| oxford_pets | FedPGP | HM | 96.61 (partial) | 96.61 | +0.00 |" in comp
    assert "| oxford_pets | PromptFL | Local | 92.00 ± 2.83 | 95.12 | -3.12 |" in comp
    for name in ("base2novel.csv", "base2novel.tex", "README.md", "oxford_pets_rounds.png", "oxford_pets_clients.png",
                 "oxford_pets_bytes.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    summary = open(os.path.join(out, "README.md")).read()
    assert "5 of 8 runs finished" in summary and dirs["dtd", "FedPGP", "2"] in summary
    tex = open(os.path.join(out, "base2novel.tex")).read()
    assert "92.00 $\\pm$ 2.83" in tex and "oxford\\_pets" in tex


def test_lodo_detail_and_average(tmp_path):
    root = str(tmp_path / "runs")
    keys = [{"dataset": "office", "method": "CoOp", "domain": d, "seed": "1"} for d in ("amazon", "caltech")]
    d_amazon, d_caltech = manifest(root, "lodo", keys)
    fake_run(d_amazon, {"local": 41.54, "base": None, "novel": None, "hm": None},
             per_domain={"caltech": 89.03, "dslr": 16.49, "webcam": 19.1})
    out = str(tmp_path / "report")
    write_report(root, "lodo", out)
    v = values(out, "lodo")
    table2 = "office: accuracy on the held-out domain (Table 2)"
    assert float(v[table2, "CoOp", "amazon"]["mean"]) == pytest.approx(41.54)
    assert v[table2, "CoOp", "caltech"]["found"] == "0"  # missing run
    detail = "office, CoOp: each client (source domain) on the held-out domain (Table 4)"
    assert float(v[detail, "amazon", "caltech"]["mean"]) == pytest.approx(89.03)
    # Avg +- std over clients: the paper's 41.54 +- 41.15 (sample std) for CoOp, held-out Amazon
    md = open(os.path.join(out, "lodo.md")).read()
    assert "| amazon | — | 89.03 |" in md
    assert Cell([89.03, 16.49, 19.1], 3).text() == "41.54 ± 41.15"  # the paper's Table 4 CoOp row
    assert Cell([1.0], 3).text() == "1.00 (1/3)" and Cell([], 3).text() == "missing (0/3)"
    comp = open(os.path.join(out, "lodo_vs_published.md")).read()
    assert "| CoOp | amazon | 41.54 | 41.54 | +0.00 |" in comp


def test_cost_and_communication_tables(tmp_path):
    root = str(tmp_path / "runs")
    keys = [{"dataset": "toyworld", "method": m, "seed": "1"} for m in ("FedFFT", "FLoRA")]
    d_fft, d_flora = manifest(root, "communication", keys)
    fake_run(d_fft, {"local": 50.0, "base": None, "novel": None, "hm": None}, rounds=3, up=4096, down=4096,
             clients=(0, 1, 2), shared=1024, trainer="FedFFT")
    fake_run(d_flora, {"local": 60.0, "base": None, "novel": None, "hm": None}, rounds=3, up=64, down=64,
             clients=(0, 1), shared=16, trainer="FLoRA")
    out = str(tmp_path / "report")
    write_report(root, "communication", out)
    md = open(os.path.join(out, "communication.md")).read()
    # FedFFT: 3 rounds x 3 clients x 8192 B = 72 KiB; FLoRA: 3 x 2 x 128 B = 768 B; ratio FLoRA / FedFFT
    assert "| FedFFT | 1,024 | 4.00 KiB | 4.00 KiB | 72.00 KiB | 0.0 | 50.00 |" in md
    assert "| FLoRA | 16 | 64 B | 64 B | 768 B | 1.0 | 60.00 |" in md
    # cost: seconds per round are the rounds' seconds (all evaluated: median of 1, 2, 3 x seconds)
    root2 = str(tmp_path / "cost")
    d_fft, d_flora = manifest(root2, "cost", keys)
    fake_run(d_fft, {"local": 50.0, "base": None, "novel": None, "hm": None}, rounds=3, seconds=4.0, trainer="FedFFT")
    fake_run(d_flora, {"local": 60.0, "base": None, "novel": None, "hm": None}, rounds=3, seconds=1.0)
    for d, mem in ((d_fft, 2 ** 30), (d_flora, 2 ** 28)):
        with open(os.path.join(d, "run_info.json"), "w") as f:
            json.dump({"peak_memory_bytes": mem, "memory_kind": "cuda max_memory_allocated"}, f)
    write_report(root2, "cost", str(tmp_path / "r2"))
    md = open(os.path.join(tmp_path / "r2", "cost.md")).read()
    assert "| FLoRA | 25 | 0 | 100 B | 2.000 | 256.00 MiB | 4.00 | 4.00 | 60.00 |" in md
    # our ratios next to FLoRA's claim (34.72x faster, 2.47x less memory than full fine-tuning), labelled as such
    comp = open(os.path.join(tmp_path / "r2", "cost_vs_published.md")).read()
    claim = "FLoRA paper's claim (\"up to\"), ViT-B/32"
    assert f"| toyworld: cost per client-round | FLoRA | faster x | 4.00 | 34.72 | -30.72 | {claim} |" in comp
    assert f"| toyworld: cost per client-round | FLoRA | less memory x | 4.00 | 2.47 | +1.53 | {claim} |" in comp
    assert "FedFFT" not in comp  # the claim is about FLoRA only


def test_report_cli_errors_and_scan_without_manifest(tmp_path, capsys):
    assert report_main([str(tmp_path / "nowhere"), "--table", "base2novel"]) == 2
    assert "does not exist" in capsys.readouterr().err
    fake_run(str(tmp_path / "a" / "s1"), {"local": 80.0, "base": 70.0, "novel": 60.0, "hm": 64.6})
    assert report_main([str(tmp_path / "a")]) == 2  # no manifest: the table must be named
    assert "--table" in capsys.readouterr().err
    assert report_main([str(tmp_path / "a"), "--table", "base2novel", "--out", str(tmp_path / "o")]) == 0
    assert "| PromptFL | 80.00 | 70.00 | 60.00 |" in open(tmp_path / "o" / "base2novel.md").read()
    assert report_main([str(tmp_path / "a"), "--table", "lodo", "--out", str(tmp_path / "o2")]) == 2
    assert "held-out domain" in capsys.readouterr().err


def test_zero_shot_is_a_dashed_line_across_the_rounds(tmp_path, monkeypatch):
    import tools.report_plots as plots

    root = str(tmp_path / "runs")
    keys = [{"dataset": "toyworld", "method": m, "seed": s} for m in ("ZeroshotCLIP", "PromptFL") for s in ("1", "2")]
    dirs = manifest(root, "base2novel", keys)
    for d, hm in zip(dirs[:2], (70.0, 72.0), strict=True):  # nothing trained: one evaluation round
        fake_run(d, {"local": 80.0, "base": 70.0, "novel": 70.0, "hm_local_base_novel": hm}, rounds=1, shared=0,
                 trainer="ZeroshotCLIP")
    for d in dirs[2:]:
        fake_run(d, {"local": 90.0, "base": 80.0, "novel": 60.0, "hm_local_base_novel": 68.0}, rounds=4)
    drawn = {}
    save = plots._save

    def capture(fig, path):
        drawn[os.path.basename(path)] = [(ln.get_label(), list(ln.get_xdata()), list(ln.get_ydata()),
                                          ln.get_linestyle()) for ln in fig.axes[0].get_lines()]
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", capture)
    write_report(root, "base2novel", str(tmp_path / "out"))
    for name in ("toyworld_rounds.png", "toyworld_bytes.png"):
        lines = {label: (xs, ys, style) for label, xs, ys, style in drawn[name]}
        assert set(lines) == {"PromptFL", "zero-shot CLIP"}
        xs, ys, style = lines["zero-shot CLIP"]
        # a horizontal line across the whole axis (axes coordinates 0..1) at the seed-mean HM(L,B,N), dashed
        assert xs == [0, 1] and ys == [pytest.approx(71.0)] * 2 and style == "--"
    assert drawn["toyworld_rounds.png"][0][1] == [1, 2, 3, 4]  # PromptFL: one point per round


def test_base2novel_report_gives_every_summary_and_the_global_model(tmp_path):
    """'Every summary': HM(B,N), HM(L,B,N) and (L+HM)/2 from the seed-averaged Local / Base / Novel, and the
    global model's Base / Novel / HM (issue 15); the main table's note says which summary it shows."""
    root = str(tmp_path / "runs")
    keys = [{"dataset": "dtd", "method": "FedPGP", "seed": s} for s in ("1", "2")]
    d1, d2 = manifest(root, "base2novel", keys)
    fake_run(d1, {"local": 90.0, "base": 80.0, "novel": 60.0, "hm": 68.57, "global_base": 70.0, "global_novel": 66.0})
    fake_run(d2, {"local": 94.0, "base": 70.0, "novel": 70.0, "hm": 70.0, "global_base": 72.0, "global_novel": 64.0})
    (d3,) = manifest(root, "base2novel", [{"dataset": "dtd", "method": "PromptFL", "seed": "1"}])
    fake_run(d3, {"local": 90.0, "base": 80.0, "novel": 60.0, "hm": 68.57})  # one model: no global columns
    out = str(tmp_path / "report")
    write_report(root, "base2novel", out)
    v = values(out, "base2novel")
    row = ("Every summary", "dtd / FedPGP")
    hm = 2 * 75 * 65 / 140
    assert float(v[(*row, "HM(B,N)")]["mean"]) == pytest.approx(hm)
    assert float(v[(*row, "HM(L,B,N)")]["mean"]) == pytest.approx(hm3(92, 75, 65))
    assert float(v[("dtd", "FedPGP", "HM")]["mean"]) == pytest.approx(hm3(92, 75, 65))  # the main table: FedPGP's HM
    assert float(v[(*row, "(L+HM)/2")]["mean"]) == pytest.approx((92 + hm) / 2)
    assert float(v[(*row, "Global Base")]["mean"]) == pytest.approx(71.0)
    assert float(v[(*row, "Global HM")]["mean"]) == pytest.approx(2 * 71 * 65 / 136)
    assert "| dtd / PromptFL | 68.57 |" in open(os.path.join(out, "base2novel.md")).read()
    assert "| — | — | — |" in open(os.path.join(out, "base2novel.md")).read()  # no global model: not "missing"
    md = open(os.path.join(out, "base2novel.md")).read()
    assert "| dtd / FedPGP |" in md and "missing (" not in md
    assert "HM = HM(Local, Base, Novel) = 3 / (1/L + 1/B + 1/N), FedPGP's HM column" in md
    assert "HM(L,B,N): HM(Local, Base, Novel) = 3 / (1/L + 1/B + 1/N): FedPGP (its HM column), FedTPG" in md


def test_fedpgps_published_hm_is_the_harmonic_mean_of_local_base_and_novel():
    """Why the base-to-novel tables' HM is HM(Local, Base, Novel): every HM cell FedPGP prints (Tables 1 and 6,
    as transcribed in tools/published/fedpgp.json) is that of its own Local / Base / Novel to the rounding, but
    one (DTD FedPGP: 89.07 / 69.65 / 55.25 give 68.67, printed 68.15); HM(Base, Novel) matches none."""
    from federated.results import summaries

    with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools", "published", "fedpgp.json")) as f:
        tables = json.load(f)["tables"]
    cells = [(t, ds, m, c) for t in ("base2novel", "fedpgp_ablation") for ds, rows in tables[t].items()
             for m, c in rows.items() if isinstance(c, dict) and "hm" in c]
    assert len(cells) == 51
    three = [key for *key, c in cells if abs(summaries(c["local"], c["base"], c["novel"])["hm_local_base_novel"]
                                             - c["hm"]) > 0.015]
    two = [c for *_, c in cells if abs(summaries(c["local"], c["base"], c["novel"])["hm"] - c["hm"]) <= 0.015]
    assert three == [["base2novel", "dtd", "FedPGP"]] and two == []
