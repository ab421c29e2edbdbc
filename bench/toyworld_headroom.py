"""Toy-world headroom of the tiny CLIP, and the papers' base-to-novel phenomena in the demo setting.

    python bench/toyworld_headroom.py                  # headroom table: shipped weights, demo world
    python bench/toyworld_headroom.py --methods PromptFL CoOp FedOTP FedPGP FedTV --seeds 1 2

Headroom: zero-shot ("a photo of a {}.") against a 16-shot linear probe (L-BFGS logistic regression on
the L2-normalised frozen image features) on the demo world's base half (labels 0-19), novel half
(20-39) and on 20 classes whose colour-shape pairs pretraining never saw; "zero-shot, pair right" is the
share of test images whose zero-shot prediction has the right colour and shape (so the rest of the
zero-shot error is the surface pattern alone).

Methods: each trainer runs the demo setting (``python federated_main.py --trainer M``: its own tiny
config, 40-class world, 5 clients, 16 shots, 10 rounds) for every seed; the table gives the final
Local / Base / Novel / HM(Base, Novel) / HM(Local, Base, Novel) (mean over seeds) beside zero-shot CLIP, then
the relations the papers show (FedPGP Table 1, whose HM is HM(Local, Base, Novel)) and whether each holds here.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from datasets.toyworld import all_classnames, parse_classname, seen_in_pretraining  # noqa: E402
from tools.pretrain_toy_clip import (  # noqa: E402
    DEFAULT_WEIGHTS,
    build_tiny_clip,
    default_params,
    encode_images,
    encode_texts,
    get_tokenizer,
    linear_probe_accuracy,
    split_images,
)


def class_sets(p: dict) -> dict[str, list[str]]:
    """The demo world's base and novel halves and as many classes of pairs never seen in pretraining."""
    names = all_classnames(int(p["VERSION"]))
    n = int(p["NUM_CLASSES"])
    held = [c for c in names if not seen_in_pretraining(c)][:n // 2]
    return {f"base (labels 0-{n // 2 - 1})": names[:n // 2], f"novel (labels {n // 2}-{n - 1})": names[n // 2:n],
            "pairs unseen in pretraining": held}


@torch.no_grad()
def headroom_row(model, tok, p: dict, classes: list[str], shots: int) -> dict:
    """Zero-shot %, zero-shot with the right colour-shape pair %, and the ``shots``-shot linear probe %."""
    tr_img, tr_lab, _ = split_images(p, "train", classes, shots)
    te_img, te_lab, _ = split_images(p, "test", classes, int(p["TEST_PER_CLASS"]))
    te_f = encode_images(model, te_img)
    pred = (te_f @ encode_texts(model, tok, [f"a photo of a {c}." for c in classes]).t()).argmax(1).numpy()
    pair = np.array([parse_classname(c)[1:] for c in classes])
    with torch.enable_grad():
        lp = linear_probe_accuracy(encode_images(model, tr_img), tr_lab, te_f, te_lab)
    return {"zs": float((pred == te_lab).mean() * 100),
            "zs_pair": float((pair[pred] == pair[te_lab]).all(1).mean() * 100), "lp": lp}


def headroom_table(weights: Path, p: dict, shots: int = 16) -> tuple[str, dict]:
    """Markdown table of :func:`headroom_row` per class set; also the numbers."""
    model, tok = build_tiny_clip(weights), get_tokenizer()
    rows, out = [], {}
    for name, classes in class_sets(p).items():
        r = headroom_row(model, tok, p, classes, shots)
        out[name] = r
        rows.append(f"| {name} | {len(classes)} | {r['zs']:.1f} | {r['zs_pair']:.1f} | {r['lp']:.1f} | "
                    f"{r['lp'] - r['zs']:+.1f} |")
    head = (f"| classes (world seed {p['SEED']}, {p['TEST_PER_CLASS']} test images per class) | n | zero-shot % | "
            f"zero-shot, pair right % | {shots}-shot linear probe % | probe - zero-shot |\n|---|---|---|---|---|---|")
    return "\n".join([head, *rows]), out


def run_methods(methods: list[str], seeds: list[int], flags: list[str], opts: list[str]) -> dict:
    """Final and zero-shot Local/Base/Novel/HM of each method's demo run per seed (``flags``: extra command-line
    flags, ``opts``: KEY VALUE config overrides)."""
    from federated.run import main

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in methods:
            for s in seeds:
                t = time.time()
                res = main(["--trainer", m, "--seed", str(s), "--output-dir", os.path.join(tmp, f"{m}_{s}"), *flags,
                            "FED.SHOW_PROGRESS", "False", *opts])
                out.setdefault(m, []).append(res["final"])
                if m == methods[0]:
                    out.setdefault("ZeroshotCLIP", []).append(res["zero_shot"])
                f = res["final"]
                print(f"{m} seed {s}: Local {f['local']:.1f} Base {f['base']:.1f} Novel {f['novel']:.1f} "
                      f"HM(B,N) {f['hm']:.1f} HM(L,B,N) {f['hm_local_base_novel']:.1f} ({time.time() - t:.0f} s)",
                      flush=True)
    return out


def methods_table(out: dict) -> tuple[str, dict]:
    """Markdown table of the mean final metrics per method, and the means (each summary is the mean of the
    per-seed summaries)."""
    keys = ("local", "base", "novel", "hm", "hm_local_base_novel")
    means = {m: {k: float(np.mean([r[k] for r in rs])) for k in keys} for m, rs in out.items()}
    lines = ["| method | Local | Base | Novel | HM(B,N) | HM(L,B,N) | seeds |", "|---|---|---|---|---|---|---|"]
    for m, v in means.items():
        lines.append(f"| {m} | " + " | ".join(f"{v[k]:.1f}" for k in keys) + f" | {len(out[m])} |")
    return "\n".join(lines), means


HM = "hm_local_base_novel"  # FedPGP Table 1's HM


def relations(means: dict) -> list[tuple[str, bool]]:
    """The base-to-novel relations of the papers (FedPGP Table 1) that both sides of ``means`` allow; HM is
    FedPGP's, HM(Local, Base, Novel) (its Table 1 HM column is that, not HM(Base, Novel))."""
    zs = means.get("ZeroshotCLIP")
    checks = []
    g = means.get
    if zs and "PromptFL" in means:
        checks.append(("PromptFL Base > zero-shot Base", g("PromptFL")["base"] > zs["base"]))
        checks.append(("PromptFL HM > zero-shot HM", g("PromptFL")[HM] > zs[HM]))
    local_best = max((m for m in means if m != "ZeroshotCLIP"), key=lambda m: means[m]["local"], default=None)
    for m in ("CoOp", "FedOTP"):
        if m in means and zs:
            top2 = sorted((x for x in means if x != "ZeroshotCLIP"), key=lambda x: -means[x]["local"])[:2]
            checks.append((f"{m} among the two highest Local (best: {local_best})", m in top2))
            checks.append((f"{m} Novel < zero-shot Novel", means[m]["novel"] < zs["novel"]))
    if "FedPGP" in means:
        if "PromptFL" in means:
            checks.append(("FedPGP Local > PromptFL Local", means["FedPGP"]["local"] > means["PromptFL"]["local"]))
        for m in ("PromptFL", "CoOp", "FedOTP"):
            if m in means:
                checks.append((f"FedPGP HM > {m} HM", means["FedPGP"][HM] > means[m][HM]))
    return checks


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--world-seed", type=int, default=None, help="default: the ToyWorld default (1)")
    ap.add_argument("--methods", nargs="*", default=[], help="also run these trainers in the demo setting")
    ap.add_argument("--seeds", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-headroom", action="store_true", help="skip the headroom table")
    ap.add_argument("opts", nargs="*", help="KEY VALUE config overrides for the method runs")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.no_headroom:
        p = default_params() if args.world_seed is None else default_params(SEED=args.world_seed)
        t = time.time()
        table, _ = headroom_table(args.weights, p, args.shots)
        print(table)
        print(f"({time.time() - t:.0f} s)")
    if args.methods:
        flags = ["--clip-weights", str(args.weights)] if args.weights != DEFAULT_WEIGHTS else []
        out = run_methods(args.methods, args.seeds, flags, list(args.opts))
        table, means = methods_table(out)
        print(table)
        for text, ok in relations(means):
            print(f"- {text}: {'holds' if ok else 'does NOT hold'}")


if __name__ == "__main__":
    main()
