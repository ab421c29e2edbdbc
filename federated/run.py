"""Running the command line: ``federated_main.py`` calls :func:`cli`, tests and tools call :func:`main`.

``main(argv)`` parses the arguments and builds the config (``federated/cli.py``), then runs the
experiment in process, on Flower's simulation (``--engine flower-sim``) or re-evaluates a saved run
(``--eval-only``). ``cli()`` turns the errors a user can fix into one line on stderr (exit status 2).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from federated.cli import build_cfg, parse_args
from federated.errors import ConfigError


def main(argv: list[str] | None = None) -> dict:
    """Run the command line; returns the results dict (or the eval-only record)."""
    from dassl.engine import build_trainer
    from dassl.utils import set_random_seed, setup_logger
    from federated.data import build_federated_data
    from federated.results import format_table
    from federated.server import FederatedServer

    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.eval_only and not args.model_dir:
        raise ConfigError("--eval-only needs --model-dir DIR (the OUTPUT_DIR of a finished run)")
    cfg = build_cfg(args)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    setup_logger(cfg.OUTPUT_DIR)
    log = logging.getLogger("fedtv")
    log.info("config:\n%s", cfg.dump())
    set_random_seed(int(cfg.SEED))
    if args.engine == "flower-sim":
        return _run_flower_simulation(args, cfg)
    data = build_federated_data(cfg, partition=not (args.eval_only and cfg.DATASET.SUBSAMPLE_CLASSES == "new"))
    log.info(data.summary())
    trainer = build_trainer(cfg, classnames=data.classnames)
    log.info("trainer %s: %d shared and %d personal tensors (%d trainable parameters)", cfg.TRAINER.NAME,
             len(trainer.shared_keys()), len(trainer.personal_keys()),
             sum(p.numel() for p in trainer.trainable_parameters().values()))
    server = FederatedServer(cfg, trainer, data)
    if args.eval_only:
        record = server.evaluate_saved(args.model_dir)
        path = os.path.join(cfg.OUTPUT_DIR, f"eval_{cfg.DATASET.SUBSAMPLE_CLASSES}.json")
        with open(path, "w") as f:
            json.dump(record, f, indent=2)
        log.info("eval-only (%s): local %s base %s novel %s hm %s -> %s", cfg.DATASET.SUBSAMPLE_CLASSES,
                 record["local"], record["base"], record["novel"], record["hm"], path)
        return record
    results = server.run(resume=bool(args.resume))
    print(format_table(results))
    return results


def _run_flower_simulation(args: argparse.Namespace, cfg) -> dict:
    if args.eval_only:
        raise ConfigError("--engine flower-sim trains: --eval-only uses --engine inprocess")
    import importlib.util

    if importlib.util.find_spec("flwr") is None:
        raise ConfigError("--engine flower-sim needs Flower: pip install -r requirements-flower.txt")
    from federated.flower.simulation import run_flower_simulation
    from federated.results import format_table

    results = run_flower_simulation(cfg, resume=bool(args.resume))
    print(format_table(results))
    return results


def cli() -> int:
    from clip import ClipWeightsUnavailable
    from federated.errors import CheckpointError, DataError, TrainingDiverged

    try:
        main()
    except (ConfigError, DataError, CheckpointError, TrainingDiverged, ClipWeightsUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished rounds are in the checkpoint; continue with --resume", file=sys.stderr)
        return 130
    return 0
