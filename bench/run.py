"""Seconds per round and peak memory: FedTV's execution against the published way, plus a scaling table.

``python bench/run.py --size cpu|paper`` runs, for each trainer, the same toy-world experiment twice
in fresh processes -- ``--reference-mode`` (the published way: no feature cache, clients one after
another, fp32) and FedTV's fast path (cached image features, clients batched with
``FED.BATCH_CLIENTS``, ``PREC bf16`` on a GPU) -- and prints one table: steady-state training seconds
per round (rounds 2 .. R-1; evaluation only in the last round, which is not counted), the one-time
cost of building the feature cache, peak memory (GPU: ``max_memory_allocated``; CPU: the process's
peak RSS), the final Local accuracy of both, and the ratio. The last line is
``min speedup vs reference: N.Nx``.

The scaling table trains FedTV-mode clients (``--scaling-trainer``) on synthetic cached features with
fake class names: seconds per round (1 batch of 32 per client, 2 local epochs) and peak memory for
10 / 100 / 1000 clients (10 classes) and 10 / 100 / 1000 classes (10 clients).

Sizes: ``cpu`` = the tiny CLIP (runs anywhere); ``paper`` = ViT-B/16 with random weights (speed does
not depend on them), 10 clients, 50 base classes (toy world of 100), 16 shots, 2 local epochs,
batch 32, 224 px -- for a GPU.

The reference mode pays what the published codes pay per step: the image tower on every batch in
fp32, every prompt at the text tower's full context length, FedPGP / FedTV's four text passes (z_C
re-encoded, z_G, the unused personal-term pass, z_i; docs/PUBLISHED_CODE.md), clients one after another.
The fast path: cached image features, prompts trimmed after the EOS with the shared SOS + context
prefix encoded once per context set, all clients of a round in one vmapped step.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from tqdm import tqdm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SIZES = {
    "cpu": {"backbone": "tiny", "weights": "", "clients": 10, "classes": 20, "shots": 16, "epochs": 2,
            "batch": 32, "rounds": 8, "input": 0},
    "paper": {"backbone": "ViT-B/16", "weights": "none", "clients": 10, "classes": 100, "shots": 16, "epochs": 2,
              "batch": 32, "rounds": 4, "input": 224},
}
#: Config overrides of a trainer's measured runs: DP-FPL is measured private (per-example gradients, noise).
TRAINER_OPTS = {"DPFPL": ["TRAINER.DPFPL.EPSILON", "8"]}
SCALING = {"cpu": {"clients": [10, 100, 1000], "classes": [10, 100, 1000]},
           "paper": {"clients": [10, 100, 1000], "classes": [10, 100, 1000]}}


def peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def experiment_argv(spec: dict, trainer: str, reference: bool, out_dir: str, device: str,
                    fast_prec: str = "bf16", opts: list[str] = ()) -> list[str]:
    """The federated_main arguments of one measured run (``fast_prec``: the fast path's precision on a GPU;
    ``opts``: config overrides ``KEY VALUE ...`` after the trainer's own, e.g. a variant of a method)."""
    import trainers  # noqa: F401  (registers the trainers)
    from dassl.engine import TRAINER_REGISTRY

    node = TRAINER_REGISTRY.get(trainer).CFG_NODE
    argv = ["--trainer", trainer, "--backbone", spec["backbone"], "--num-users", str(spec["clients"]),
            "--rounds", str(spec["rounds"]), "--local-epochs", str(spec["epochs"]), "--num-shots", str(spec["shots"]),
            "--train-batch-size", str(spec["batch"]), "--output-dir", out_dir, "--reference-mode", str(reference),
            "DATASET.TOYWORLD.NUM_CLASSES", str(spec["classes"]), "DATASET.TOYWORLD.TEST_PER_CLASS", "10",
            "FED.SHOW_PROGRESS", "False", "FED.ZS_REFERENCE", "False", "TEST.EVAL_FREQ", "100000",
            "FED.BATCH_CLIENTS", str(not reference), "USE_CUDA", str(device == "cuda")]
    if spec["weights"]:
        argv[0:0] = ["--clip-weights", spec["weights"]]
    if spec["input"]:
        argv += ["INPUT.SIZE", f"({spec['input']}, {spec['input']})"]
    if device == "cuda" and not reference:
        argv += [f"TRAINER.{node}.PREC", fast_prec]
    return argv + TRAINER_OPTS.get(trainer, []) + list(opts)


def measure_experiment(job: dict) -> dict:
    """Run one experiment in this process; seconds per steady round, cache time, peak memory, accuracy."""
    from federated.run import main

    started = time.time()
    results = main(job["argv"])
    seconds = [r["seconds"] for r in results["rounds"]]
    steady = seconds[1:-1] or seconds
    train_total = sum(seconds)
    return {"per_round": sum(steady) / len(steady), "setup": time.time() - started - train_total,
            "memory_mb": peak_memory_mb(job["device"]), "local": results["final"]["local"],
            "execution": results["execution"]}


def measure_scaling(job: dict) -> dict:
    """FedTV-mode batched training of ``clients`` clients over ``classes`` fake classes (synthetic features)."""
    import torch

    from dassl.engine import build_trainer
    from federated.batched import BatchedClients
    from federated.cli import build_cfg, parse_args
    from federated.feature_cache import CachedFeatureLoader
    from trainers.method import RoundContext

    spec, device = job["spec"], job["device"]
    argv = ["--trainer", job["trainer"], "--backbone", spec["backbone"], "--output-dir", job["out"],
            "--local-epochs", "2", "USE_CUDA", str(device == "cuda")]
    if spec["weights"]:
        argv[0:0] = ["--clip-weights", spec["weights"]]
    if device == "cuda":
        argv += [f"TRAINER.{job['node']}.PREC", "bf16"]
    cfg = build_cfg(parse_args(argv))
    classes, clients = job["classes"], job["clients"]
    trainer = build_trainer(cfg, classnames=[f"class {i}" for i in range(classes)])
    batched = BatchedClients(trainer)
    names = trainer.shared_keys() + trainer.personal_keys()
    start = trainer.get_state(names)
    dim = int(trainer.model.clip.embed_dim)
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(clients * 32, 1, dim, generator=gen).half().numpy()
    labels = torch.randint(classes, (clients * 32,), generator=gen)

    def loaders():
        return [CachedFeatureLoader(feats, torch.arange(c * 32, (c + 1) * 32).numpy(), labels[c * 32:(c + 1) * 32],
                                    32, torch.Generator().manual_seed(c)) for c in range(clients)]

    contexts = [RoundContext(client=c, round=1) for c in range(clients)]
    batched.train([start] * clients, loaders(), 1, contexts)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.time()
    batched.train([start] * clients, loaders(), int(cfg.OPTIM.MAX_EPOCH), contexts)
    if device == "cuda":
        torch.cuda.synchronize()
    return {"per_round": time.time() - t0, "memory_mb": peak_memory_mb(device)}


def in_subprocess(kind: str, job: dict) -> dict:
    """Run one measurement in a fresh Python process (clean peak memory, no shared caches in memory)."""
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--job", kind, json.dumps(job)],
                          capture_output=True, text=True, cwd=REPO, env=os.environ.copy())
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"measurement {kind} {job} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][6:])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    p.add_argument("--trainers", nargs="*", default=["PromptFL", "CoOp", "FedPGP", "FedTV"],
                   help="trainers of the speed table (none: only the scaling table)")
    p.add_argument("--fast-prec", choices=("bf16", "fp32"), default="bf16", help="the fast path's precision on a GPU")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--rounds", type=int, default=0, help="rounds per run (0 = the size's default, >= 3)")
    p.add_argument("--scaling-trainer", default="FedTV")
    p.add_argument("--scaling-clients", type=int, nargs="*", default=None)
    p.add_argument("--scaling-classes", type=int, nargs="*", default=None)
    p.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE",
                   help="config overrides for every measured run of the speed table, e.g. TRAINER.FEDTPG.D_CTX 2")
    p.add_argument("--job", nargs=2, metavar=("KIND", "JSON"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if len(args.opts) % 2:
        p.error(f"--opts takes KEY VALUE pairs, got {len(args.opts)} words: {' '.join(args.opts)}")
    if args.job:
        kind, job = args.job[0], json.loads(args.job[1])
        import torch

        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
        out = measure_experiment(job) if kind == "experiment" else measure_scaling(job)
        print("BENCH " + json.dumps(out), flush=True)
        return
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    spec = dict(SIZES[args.size])
    if args.rounds:
        spec["rounds"] = max(args.rounds, 3)
    os.environ.setdefault("FEDTV_CACHE", tempfile.mkdtemp(prefix="fedtv-bench-cache-"))
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    rows = []
    scaling = SCALING[args.size]
    clients = scaling["clients"] if args.scaling_clients is None else args.scaling_clients
    classes = scaling["classes"] if args.scaling_classes is None else args.scaling_classes
    points = [(k, 10) for k in clients] + [(10, c) for c in classes if c != 10 or 10 not in clients]
    # progress on stderr; each table row on stdout as soon as it is measured
    bar = tqdm(total=2 * len(args.trainers) + len(points), desc="measuring", unit="run", file=sys.stderr,
               dynamic_ncols=True)

    def show(line: str) -> None:
        tqdm.write(line, file=sys.stdout)
        sys.stdout.flush()

    with tempfile.TemporaryDirectory() as tmp:
        if args.trainers:
            show(f"\n{args.size} size on {name}: {spec['backbone']}, {spec['clients']} clients, "
                 f"{spec['classes'] // 2} base classes, {spec['shots']} shots, {spec['epochs']} local epochs, "
                 f"batch {spec['batch']}; seconds per training round (rounds 2-{spec['rounds'] - 1})"
                 + (f"; overrides: {' '.join(args.opts)}" if args.opts else ""))
            header = (f"| {'trainer':<9} | {'ref s/round':>11} | {'FedTV s/round':>13} | {'speedup':>7} | "
                      f"{'cache+setup s':>13} | {'ref MB':>8} | {'FedTV MB':>8} | {'Local ref':>9} | "
                      f"{'Local FedTV':>11} |")
            show(header)
            show("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
        for trainer in args.trainers:
            res = {}
            for reference in (True, False):
                bar.set_postfix_str(f"{trainer} {'reference' if reference else 'fast path'}")
                out = os.path.join(tmp, f"{trainer}-{reference}")
                res[reference] = in_subprocess("experiment", {
                    "argv": experiment_argv(spec, trainer, reference, out, device, args.fast_prec, args.opts),
                    "device": device})
                bar.update()
            ref, fast = res[True], res[False]
            rows.append((trainer, ref, fast))
            show(f"| {trainer:<9} | {ref['per_round']:>11.3f} | {fast['per_round']:>13.3f} | "
                 f"{ref['per_round'] / fast['per_round']:>6.1f}x | {fast['setup']:>13.1f} | "
                 f"{ref['memory_mb']:>8.0f} | {fast['memory_mb']:>8.0f} | {ref['local']:>9.2f} | "
                 f"{fast['local']:>11.2f} |")
        if points:
            import trainers  # noqa: F401  (registers the trainers)
            from dassl.engine import TRAINER_REGISTRY

            node = TRAINER_REGISTRY.get(args.scaling_trainer).CFG_NODE
            show(f"\nscaling ({args.scaling_trainer}, batched clients, cached synthetic features, 1 batch of 32 "
                 f"per client, 2 local epochs)")
            show(f"| {'clients':>7} | {'classes':>7} | {'s/round':>8} | {'peak MB':>8} |")
            show("|---------|---------|----------|----------|")
            for k, c in points:
                bar.set_postfix_str(f"scaling {k} clients x {c} classes")
                r = in_subprocess("scaling", {"spec": spec, "device": device, "trainer": args.scaling_trainer,
                                              "node": node, "clients": k, "classes": c,
                                              "out": os.path.join(tmp, f"scale-{k}-{c}")})
                bar.update()
                show(f"| {k:>7} | {c:>7} | {r['per_round']:>8.3f} | {r['memory_mb']:>8.0f} |")
    bar.close()
    if rows:
        print(f"min speedup vs reference: {min(r['per_round'] / f['per_round'] for _, r, f in rows):.1f}x")


if __name__ == "__main__":
    main()
