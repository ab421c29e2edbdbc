"""The runner behind ``scripts/``: one paper table = a grid of ``federated_main.py`` runs.

A table script declares an :class:`Experiment`: its axes (datasets, methods, seeds, and e.g. held-out
domains, ranks, shots, ablation variants) with the paper's values and a miniature for the toy world,
and a function from one grid point to the run's flags and config overrides. This module turns it
into a command line shared by every script::

    python scripts/table1_base2novel.py --root DATA/ --backbone ViT-B/16 --output-root output/table1
        [--datasets oxford_pets dtd] [--methods PromptFL FedPGP] [--seeds 1 2 3]
        [--dry-run] [--estimate [--costs FILE]] [--force] [--rounds N] [--in-process] [--report] [--toy]
        [KEY VALUE ...]

* every run goes to ``OUTPUT_ROOT/<dataset>/<backbone>/<method>/<other axes>/seed<S>``;
* a run whose ``results.json`` holds a final block for all its configured rounds is skipped (unless
  ``--force``); an interrupted run (checkpoint, unfinished results) is continued with ``--resume``;
* ``--dry-run`` prints the commands and changes nothing; ``--estimate`` prints each run's estimated hours
  on one GPU and the total, in FedTV's fast mode and the published (reference) way (``tools/gpu_time.py``:
  per-operation costs of ``bench/gpu_costs.json``, or ``--costs FILE``; an estimate, not a measurement);
* integer axes (``--seeds``, ``--ranks``, ``--shots``) must hold integers (an ``ExperimentError`` names the
  axis and the bad value otherwise);
* ``OUTPUT_ROOT/manifest.json`` lists every run the script was asked for (merged over invocations),
  so that ``python -m tools.report OUTPUT_ROOT`` shows a run that never finished as missing;
* each run executes as ``python -m tools.experiments exec <federated_main args>``: ``federated_main``
  plus ``OUTPUT_DIR/run_info.json`` (wall seconds, peak memory, device) for the cost tables. One failed
  run is reported and the grid goes on; the exit status is 1 when any run failed.
* ``--toy``: the script's miniature on the toy world (``tiny`` backbone, 3 clients, 2 rounds) for CI
  and for trying a script out offline.
* a method's hyper-parameters come from ``configs/trainers/<METHOD>/<backbone>.yaml``; where a method ships
  none for the table's backbone (PromptFL and FedPGP on FLoRA's ViT-B/32), the run names its ViT-B/16 config
  (its published values) with ``--config-file`` and ``--backbone`` still chooses the CLIP.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dassl.utils.atomic import atomic_write_text
from tools.run_folder import MANIFEST, RUN_INFO, run_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Config overrides of every toy-world miniature: a small world (12 classes, 6 base / 6 novel), quiet.
TOY_OPTS = [
    "DATASET.TOYWORLD.NUM_CLASSES", "12", "DATASET.TOYWORLD.TRAIN_PER_CLASS", "8",
    "DATASET.TOYWORLD.VAL_PER_CLASS", "0", "DATASET.TOYWORLD.TEST_PER_CLASS", "6",
    "DATALOADER.TRAIN_X.BATCH_SIZE", "8", "FED.CACHE_VIEWS", "2",
]
#: Toy-world rendering styles used as domains by the domain miniatures.
TOY_DOMAINS = ["photo", "sketch", "painting"]


class ExperimentError(ValueError):
    """A script was asked for something it cannot run; the message says what is valid."""


@dataclass(frozen=True)
class Axis:
    """One dimension of a table's grid; ``--<name>`` selects a subset of its values."""

    name: str
    full: list[str]
    toy: list[str]
    help: str = ""
    choices: list[str] | None = None  # valid values (None: ``full`` + ``toy``)
    free: bool = False  # any value accepted (seeds, ranks, shots)


@dataclass
class Point:
    """One grid point: the axis values plus what the script adds (flags: last one wins; opts: KEY VALUE)."""

    values: dict[str, str]
    flags: dict[str, str] = field(default_factory=dict)
    opts: list[str] = field(default_factory=list)
    skip: bool = False  # not a valid combination (e.g. a domain of another dataset)
    backbone: str = ""


@dataclass(frozen=True)
class Run:
    """One federated run of a table: its labels, its ``federated_main`` arguments and output folder."""

    key: dict[str, str]
    argv: list[str]
    output_dir: str

    def command(self) -> list[str]:
        """The command that executes the run (``federated_main`` + ``run_info.json``)."""
        return [sys.executable, "-m", "tools.experiments", "exec", *self.argv]


@dataclass
class Experiment:
    """A paper table as a grid of runs (see the module docstring)."""

    table: str  # the report's table kind (tools/report.py TABLES)
    title: str
    axes: list[Axis]
    configure: Callable[[Point, bool], None]  # fills point.flags / point.opts for the paper (False) or toy (True)
    default_backbone: str = "ViT-B/16"
    default_output: str = ""
    description: str = ""

    # ----------------------------------------------------------------- command line
    def parser(self) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(description=self.description or self.title,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--root", default="DATA/", help="data root (default DATA/)")
        p.add_argument("--backbone", default=None,
                       help=f"CLIP backbone (default {self.default_backbone}; tiny with --toy)")
        p.add_argument("--clip-weights", default="", help="open_clip tag or file; '' = the backbone's default")
        p.add_argument("--output-root", default=None,
                       help=f"where the runs go (default {self.default_output or 'output/' + self.table})")
        for axis in self.axes:
            p.add_argument(f"--{axis.name}", nargs="+", default=None,
                           help=f"{axis.help} (default: {' '.join(axis.full)}; --toy: {' '.join(axis.toy)})")
        p.add_argument("--rounds", type=int, default=None, help="override the number of rounds of every run")
        p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
        p.add_argument("--estimate", action="store_true",
                       help="print the estimated GPU hours of every selected run and in total (fast and reference "
                            "modes, tools/gpu_time.py), run nothing")
        p.add_argument("--costs", default=None,
                       help="per-operation GPU cost file for --estimate (default bench/gpu_costs.json)")
        p.add_argument("--force", action="store_true", help="re-run finished runs from scratch")
        p.add_argument("--in-process", action="store_true",
                       help="run in this process (faster for small runs; a crash stops the grid)")
        p.add_argument("--report", action="store_true", help="write the table and plots (tools.report) at the end")
        p.add_argument("--toy", action="store_true",
                       help="the miniature on the toy world: tiny backbone, 3 clients, 2 rounds (CI, offline)")
        p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides for every run")
        return p

    def runs(self, args: argparse.Namespace) -> list[Run]:
        """The selected grid as runs."""
        toy = bool(args.toy)
        backbone = args.backbone or ("tiny" if toy else self.default_backbone)
        root = self.output_root(args)
        selected = []
        for axis in self.axes:
            wanted = getattr(args, axis.name) or (axis.toy if toy else axis.full)
            valid = axis.choices or (registered_trainers() if axis.name == "methods" else axis.full + axis.toy)
            bad = [v for v in wanted if not axis.free and v not in valid]
            if bad:
                raise ExperimentError(f"--{axis.name}: unknown {', '.join(bad)}; valid: {', '.join(valid)}")
            check_integers(axis.name, wanted)
            selected.append([(axis.name, v) for v in wanted])
        if len(args.opts or []) % 2:
            raise ExperimentError(f"config overrides must be KEY VALUE pairs, got {args.opts}")
        out = []
        for combo in itertools.product(*selected):
            point = Point(values=dict(combo), backbone=backbone)
            self.configure(point, toy)
            if not point.skip:
                out.append(self._run(point, backbone, args, root, toy))
        if not out:
            raise ExperimentError("the selection holds no valid run (e.g. --domains of another dataset)")
        return out

    def output_root(self, args: argparse.Namespace) -> str:
        default = self.default_output or os.path.join("output", self.table)
        return args.output_root or (default + "_toy" if args.toy else default)

    def _run(self, point: Point, backbone: str, args: argparse.Namespace, root: str, toy: bool) -> Run:
        from federated.config import backbone_slug

        values = point.values
        dataset = values["datasets"]
        yaml = os.path.join(REPO, "configs", "datasets", f"{dataset}.yaml")
        if not os.path.isfile(yaml):
            raise ExperimentError(f"no dataset config {yaml}; datasets: {', '.join(available_datasets())}")
        parts = [dataset, backbone_slug(backbone)]
        parts += [f"{_short(name)}{values[name]}" if name in NUMERIC_AXES else values[name]
                  for name in values if name not in ("datasets", "seeds")]
        parts.append(f"seed{values.get('seeds', '1')}")
        output_dir = os.path.join(root, *[p.replace("/", "_") for p in parts])
        flags = {"--dataset-config-file": os.path.relpath(yaml, REPO), "--root": args.root, "--backbone": backbone}
        if args.clip_weights:
            flags["--clip-weights"] = args.clip_weights
        flags.update(point.flags)
        if "--trainer" in flags and "--config-file" not in flags:
            fallback = published_config(flags["--trainer"], backbone)
            if fallback:
                flags["--config-file"] = fallback
        flags["--seed"] = values.get("seeds", "1")
        if args.rounds is not None:
            flags["--rounds"] = str(args.rounds)
        flags["--output-dir"] = output_dir
        argv = [x for kv in flags.items() for x in kv]
        argv += point.opts + ["FED.SHOW_PROGRESS", "False"] + (TOY_OPTS if toy else []) + list(args.opts or [])
        key = {name.rstrip("s") if name in PLURAL_AXES else name: v for name, v in values.items()}
        key["backbone"] = backbone
        return Run(key=key, argv=argv, output_dir=output_dir)

    def cli(self, argv: list[str] | None = None) -> int:
        """Parse, then print / run the grid; returns the exit status."""
        try:
            args = self.parser().parse_args(argv)
            runs = self.runs(args)
        except ExperimentError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if args.estimate:
            return print_estimate(runs, args.costs)
        root = self.output_root(args)
        status = execute(runs, dry_run=args.dry_run, force=args.force, in_process=args.in_process,
                         manifest=(root, self.table, self.title))
        if args.report and not args.dry_run:
            from tools.report import main as report_main

            report_main([root, "--table", self.table, "--out", os.path.join(root, "report")])
        return status


def published_config(trainer: str, backbone: str) -> str | None:
    """``configs/trainers/<trainer>/vit_b16.yaml`` (relative to the repository) when ``trainer`` ships no
    config for ``backbone`` but one for ViT-B/16, else None (its own config, or none at all, applies)."""
    from federated.config import default_trainer_config

    if default_trainer_config(trainer, backbone):
        return None
    path = default_trainer_config(trainer, "ViT-B/16")
    return os.path.relpath(path, REPO) if path else None


def print_estimate(runs: list[Run], costs_file: str | None) -> int:
    """``--estimate``: the estimated GPU hours of ``runs`` (tools/gpu_time.py); 2 on a bad costs file or run."""
    from tools.gpu_time import CostsError, estimate_runs, format_runs, load_costs

    try:
        costs = load_costs(costs_file)
        print(format_runs(estimate_runs(runs, costs), costs))
    except CostsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


NUMERIC_AXES = ("ranks", "shots")
#: axes whose values are integers, with their smallest valid value
INTEGER_AXES = {"seeds": 0, "ranks": 1, "shots": 1}


def check_integers(axis: str, values: list[str]) -> None:
    """ExperimentError naming the axis and the values that are not integers >= its minimum."""
    if axis not in INTEGER_AXES:
        return
    low = INTEGER_AXES[axis]
    bad = [v for v in values if not (v.strip().lstrip("-").isdigit() and int(v) >= low)]
    if bad:
        raise ExperimentError(f"--{axis}: {', '.join(repr(v) for v in bad)} is not an integer >= {low}"
                              if len(bad) == 1 else
                              f"--{axis}: {', '.join(repr(v) for v in bad)} are not integers >= {low}")
PLURAL_AXES = ("datasets", "methods", "seeds", "variants", "domains", "ranks", "partitions")


def _short(name: str) -> str:
    return {"ranks": "rank", "shots": "shots"}[name]


def registered_trainers() -> list[str]:
    import trainers  # noqa: F401  (registers the trainers)
    from dassl.engine import TRAINER_REGISTRY

    return list(TRAINER_REGISTRY.registered_names())


def available_datasets() -> list[str]:
    return sorted(f[:-5] for f in os.listdir(os.path.join(REPO, "configs", "datasets")) if f.endswith(".yaml"))


# --------------------------------------------------------------------- manifest
def update_manifest(root: str, table: str, title: str, runs: list[Run]) -> str:
    """Merge ``runs`` into ``root/manifest.json`` (keyed by output folder relative to ``root``)."""
    path = os.path.join(root, MANIFEST)
    manifest = {"table": table, "title": title, "runs": {}}
    if os.path.isfile(path):
        with open(path) as f:
            manifest = json.load(f)
        if manifest.get("table") != table:
            raise ExperimentError(f"{root} holds the runs of table '{manifest.get('table')}', not '{table}': "
                                  f"use another --output-root")
    for run in runs:
        manifest["runs"][os.path.relpath(run.output_dir, root)] = {"key": run.key, "argv": run.argv}
    atomic_write_text(path, json.dumps(manifest, indent=1))
    return path


# --------------------------------------------------------------------- execution
def execute(runs: list[Run], dry_run: bool = False, force: bool = False, in_process: bool = False,
            manifest: tuple[str, str, str] | None = None) -> int:
    """Print and (unless ``dry_run``) run every run not finished yet; returns 0, or 1 if a run failed."""
    if manifest and not dry_run:
        update_manifest(manifest[0], manifest[1], manifest[2], runs)
    failed = []
    todo = 0
    for i, run in enumerate(runs, 1):
        state = run_state(run.output_dir)
        if state == "finished" and not force:
            print(f"[{i}/{len(runs)}] skip (finished): {run.output_dir}")
            continue
        argv = run.argv + (["--resume", "true"] if state == "partial" and not force else [])
        todo += 1
        print(f"[{i}/{len(runs)}] {shlex.join(['python', *Run(run.key, argv, run.output_dir).command()[1:]])}",
              flush=True)
        if dry_run:
            continue
        ok = run_in_process(argv) if in_process else subprocess.run(
            Run(run.key, argv, run.output_dir).command(), cwd=REPO).returncode == 0
        if not ok:
            failed.append(run.output_dir)
            print(f"FAILED: {run.output_dir} (see its log.txt)", file=sys.stderr)
    done = "would run" if dry_run else "ran"
    print(f"{len(runs)} runs: {len(runs) - todo} finished before, {done} {todo}, {len(failed)} failed")
    return 1 if failed else 0


def run_in_process(argv: list[str]) -> bool:
    """Run ``federated_main`` here and write ``run_info.json``; False (and the error printed) on failure."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from federated.run import main

    try:
        import torch

        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        started = time.time()
        results = main(argv)
        write_run_info(results["config"]["OUTPUT_DIR"], argv, time.time() - started, cuda)
        return True
    except Exception as err:  # noqa: BLE001 - one failed run must not stop the grid
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return False


def write_run_info(output_dir: str, argv: list[str], seconds: float, cuda: bool) -> None:
    """``run_info.json``: wall seconds, peak memory (CUDA: max allocated tensors; CPU: peak RSS of the
    process, everything included) and the device, for the cost tables."""
    import resource

    import torch

    info = {"argv": argv, "seconds": seconds,
            "peak_memory_bytes": (torch.cuda.max_memory_allocated() if cuda
                                  else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
            "memory_kind": "cuda max_memory_allocated" if cuda else "cpu peak RSS",
            "device": torch.cuda.get_device_name() if cuda else "cpu"}
    with open(os.path.join(output_dir, RUN_INFO), "w") as f:
        json.dump(info, f, indent=1)


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.experiments exec ARGS``: one run (federated_main ARGS + run_info.json)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "exec":
        print("usage: python -m tools.experiments exec <federated_main.py arguments>", file=sys.stderr)
        return 2
    return 0 if run_in_process(argv[1:]) else 1


if __name__ == "__main__":
    sys.exit(main())
