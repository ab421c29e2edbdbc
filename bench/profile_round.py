"""Where a federated round spends its time: a torch.profiler summary of a few rounds of one run.

    python bench/profile_round.py --trainer FedPGP --size paper --rounds 3 --out DIR

Runs ``federated_main`` in this process (the experiment of ``bench/run.py`` at that size, fast path)
under ``torch.profiler`` and writes ``DIR/profile_<trainer>.txt``: the top operators by device time
(CUDA) or CPU time, and one summary line with the wall time of the profiled run, the time spent in
device kernels and their share of the wall time (how busy the GPU was rather than waiting on Python
or kernel launches), and the number of kernel launches. On a CPU-only machine the same table is made
from CPU times (the share line then says so).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "bench"))


def kernel_summary(events, wall_s: float, on_device: bool) -> str:
    """One line: profiled wall seconds, seconds in device kernels, their share, kernel launches."""
    if not on_device:
        cpu_s = sum(e.self_cpu_time_total for e in events) / 1e6
        return f"wall {wall_s:.2f} s, CPU operator self time {cpu_s:.2f} s (no CUDA device: no kernel share)"
    kernel_us = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA")
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    return (f"wall {wall_s:.2f} s, device kernels {kernel_us / 1e6:.2f} s "
            f"({100 * kernel_us / 1e6 / max(wall_s, 1e-9):.0f} % of wall), {launches} kernel launches")


def main(argv: list[str] | None = None) -> str:
    import torch
    from run import SIZES, experiment_argv
    from torch.profiler import ProfilerActivity, profile

    from federated.run import main as run_main

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trainer", default="FedPGP")
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=".")
    p.add_argument("--top", type=int, default=25, help="operators listed")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    spec = {**SIZES[args.size], "rounds": args.rounds}
    os.environ.setdefault("FEDTV_CACHE", tempfile.mkdtemp(prefix="fedtv-profile-cache-"))
    with tempfile.TemporaryDirectory() as tmp:
        argv_run = experiment_argv(spec, args.trainer, False, os.path.join(tmp, "warm"), device)
        run_main(argv_run)  # fills the feature cache: the profile shows training rounds, not caching
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with profile(activities=activities) as prof:
            start = time.time()
            results = run_main(experiment_argv(spec, args.trainer, False, os.path.join(tmp, "profiled"), device))
            if device == "cuda":
                torch.cuda.synchronize()
            wall = time.time() - start
    events = prof.key_averages()
    sort = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    text = (f"{args.trainer}, {args.size} size, {args.rounds} rounds, fast path on {device}\n"
            f"{kernel_summary(events, wall, device == 'cuda')}; the rounds themselves "
            f"{sum(r['seconds'] for r in results['rounds']):.2f} s (the rest: data, model and cache set-up)\n\n"
            f"{events.table(sort_by=sort, row_limit=args.top)}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"profile_{args.trainer}.txt")
    with open(path, "w") as f:
        f.write(text)
    print(text.splitlines()[1])
    print(f"profile written to {path}")
    return path


if __name__ == "__main__":
    main()
