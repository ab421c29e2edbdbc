"""Cost of the weight-tuning methods on this hardware: FLoRA versus full fine-tuning (FedFFT), and others.

FLoRA's claim (arXiv 2404.15182): 34.72x faster training and 2.47x less memory than full fine-tuning
(on GPU, ViT-B/32). This script runs each method for a few rounds on the same federated setting,
each in its own process, and prints a table: trainable parameters (shared / personal), bytes up /
down per client per round (from results.json), training seconds per round (median over the rounds
without evaluation), and peak memory, plus each method's ratios against FedFFT.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (tensors only); on CPU the process's peak
resident set size (``resource.getrusage(...).ru_maxrss``: everything, including Python and the
dataset), so CPU ratios understate the difference in tensor memory.

Examples::

    python bench/lora_cost.py                          # tiny CLIP, toy world, CPU
    python bench/lora_cost.py --backbone ViT-B/32 --root DATA/ --dataset-config-file configs/datasets/caltech101.yaml
    python bench/lora_cost.py --methods FLoRA FedFFT CELoRA --rounds 4 --users 4
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_METHODS = ["FLoRA", "FedFFT", "CELoRA", "FedLC", "FedAA", "PromptFL"]


def run_one(args: argparse.Namespace, method: str, out_dir: str) -> dict:
    """One method's run in this process; returns its cost record."""
    import resource

    import torch

    sys.path.insert(0, REPO)
    from federated.run import main

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    argv = ["--trainer", method, "--backbone", args.backbone, "--rounds", str(args.rounds),
            "--num-users", str(args.users), "--local-epochs", "1", "--output-dir", out_dir,
            "--train-batch-size", str(args.batch_size)]
    if args.clip_weights:
        argv += ["--clip-weights", args.clip_weights]
    if args.root:
        argv += ["--root", args.root]
    if args.dataset_config_file:
        argv += ["--dataset-config-file", args.dataset_config_file]
    opts = ["FED.SHOW_PROGRESS", "False", "FED.ZS_REFERENCE", "False", "TEST.EVAL_FREQ", str(10 ** 6)]
    res = main(argv + ["--num-shots", str(args.shots)] + opts + list(args.opts))
    train_rounds = res["rounds"][:-1] or res["rounds"]  # the last round also evaluates
    peak = (torch.cuda.max_memory_allocated() if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {
        "method": method,
        "params_shared": res["params"]["shared"],
        "params_personal": res["params"]["personal"],
        "bytes_up": res["rounds"][0]["bytes_up_per_client"],
        "bytes_down": res["rounds"][0]["bytes_down_per_client"],
        "seconds_per_round": statistics.median(r["seconds"] for r in train_rounds),
        "peak_memory_mib": peak / 2 ** 20,
        "memory_kind": "cuda max_memory_allocated" if cuda else "cpu peak RSS",
        "final_local": res["final"]["local"],
    }


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def table(records: list[dict], reference: str = "FedFFT") -> str:
    """The cost table with ratios (reference / method: > 1 means the method is cheaper)."""
    ref = next((r for r in records if r["method"] == reference), None)
    head = (f"{'method':<10} {'shared':>10} {'personal':>9} {'up/client':>11} {'down/client':>11} "
            f"{'s/round':>8} {'peak MiB':>9} {'local %':>8}")
    if ref:
        head += f" {'faster x':>9} {'less mem x':>10} {'less up x':>10}"
    lines = [head, "-" * len(head)]
    for r in records:
        line = (f"{r['method']:<10} {r['params_shared']:>10,} {r['params_personal']:>9,} "
                f"{_fmt_bytes(r['bytes_up']):>11} "
                f"{_fmt_bytes(r['bytes_down']):>11} {r['seconds_per_round']:>8.2f} {r['peak_memory_mib']:>9.1f} "
                f"{(r['final_local'] or 0):>8.2f}")
        if ref:
            up = ref["bytes_up"] / r["bytes_up"] if r["bytes_up"] else float("inf")
            line += (f" {ref['seconds_per_round'] / r['seconds_per_round']:>9.2f} "
                     f"{ref['peak_memory_mib'] / r['peak_memory_mib']:>10.2f} {up:>10.1f}")
        lines.append(line)
    lines.append(f"peak memory: {records[0]['memory_kind']}; ratios are {reference} / method")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--clip-weights", default="", help="'' = the backbone's default; 'none' = random")
    p.add_argument("--root", default="")
    p.add_argument("--dataset-config-file", default="")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--users", type=int, default=3)
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", default="", help="also write the records to this file")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)  # internal: run one method, print JSON
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides for every run")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.one:
        with tempfile.TemporaryDirectory() as out:
            print("RECORD " + json.dumps(run_one(args, args.one, out)))
        return []
    records = []
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--methods"]
    passthrough = [a for a in passthrough if a not in args.methods]
    for method in args.methods:  # one process per method: peak memory is per process
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", method, *passthrough],
                              capture_output=True, text=True, cwd=REPO)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RECORD ")), None)
        if proc.returncode != 0 or line is None:
            print(f"{method}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        records.append(json.loads(line[len("RECORD "):]))
    if records:
        print(table(records))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)
    return records


if __name__ == "__main__":
    main()
