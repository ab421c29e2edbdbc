"""Seconds per federated round: FedTV's execution versus the published way of running.

The published implementations push every training image through the frozen image encoder at every
step (``FED.FEATURE_CACHE False``) in fp32; FedTV caches augmented-view image features once
(``FED.FEATURE_CACHE True``) and uses mixed precision on GPU (``PREC``). This script runs the same
experiment both ways for each trainer and prints a table of mean seconds per round (rounds 2.. so
that one-time costs such as caching and the zero-shot reference are reported separately), plus
the final Local accuracy of each, so a speed-up never hides a change of results.

Usage::

    python bench/round_speed.py                       # tiny CLIP on the toy world, CPU
    python bench/round_speed.py --backbone ViT-B/16 --clip-weights openai --trainers PromptFL CoOp \\
        --clients 10 --rounds 3 --device cuda
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_once(trainer: str, args, cached: bool, out_dir: str) -> dict:
    from federated_main import main

    argv = ["--trainer", trainer, "--backbone", args.backbone, "--num-users", str(args.clients),
            "--rounds", str(args.rounds), "--local-epochs", str(args.local_epochs), "--output-dir", out_dir,
            "FED.SHOW_PROGRESS", "False", "FED.ZS_REFERENCE", "False", "FED.FEATURE_CACHE", str(cached),
            "USE_CUDA", str(args.device == "cuda")]
    if args.clip_weights:
        argv[0:0] = ["--clip-weights", args.clip_weights]
    if args.classes:
        argv += ["DATASET.TOYWORLD.NUM_CLASSES", str(args.classes)]
    started = time.time()
    results = main(argv)
    total = time.time() - started
    seconds = [r["seconds"] for r in results["rounds"]]
    steady = seconds[1:] or seconds
    return {"per_round": sum(steady) / len(steady), "first_round": seconds[0], "total": total,
            "local": results["final"]["local"]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trainers", nargs="+", default=["PromptFL", "CoOp"])
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--clip-weights", default="")
    p.add_argument("--clients", type=int, default=5)
    p.add_argument("--classes", type=int, default=0, help="toy-world classes (0 = the dataset default)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--local-epochs", type=int, default=2)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = p.parse_args(argv)
    os.environ.setdefault("FEDTV_CACHE", tempfile.mkdtemp(prefix="fedtv-bench-cache-"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for trainer in args.trainers:
            published = run_once(trainer, args, False, os.path.join(tmp, f"{trainer}-published"))
            ours = run_once(trainer, args, True, os.path.join(tmp, f"{trainer}-cached"))
            rows.append((trainer, published, ours))
    print(f"\n{args.backbone}, {args.clients} clients, {args.local_epochs} local epochs, device {args.device}")
    header = (f"{'trainer':<12} {'published s/round':>18} {'FedTV s/round':>14} {'speed-up':>9} "
              f"{'1st round (cache)':>18} {'Local pub.':>10} {'Local FedTV':>11}")
    print(header)
    print("-" * len(header))
    for trainer, pub, ours in rows:
        print(f"{trainer:<12} {pub['per_round']:>18.2f} {ours['per_round']:>14.2f} "
              f"{pub['per_round'] / ours['per_round']:>8.1f}x {ours['first_round']:>18.2f} "
              f"{pub['local']:>10.2f} {ours['local']:>11.2f}")


if __name__ == "__main__":
    main()
