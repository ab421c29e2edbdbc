"""Running the command line: ``federated_main.py`` calls :func:`cli`, tests and tools call :func:`main`.

``main(argv)`` parses the arguments and builds the config (``federated/cli.py``), then runs the
experiment in process, on Flower's simulation (``--engine flower-sim``) or re-evaluates a saved run
(``--eval-only``). ``cli()`` turns the errors a user can fix into one line on stderr (exit status 2).
"""
from __future__ import annotations

import json
import logging
import os
import sys

from federated.cli import build_cfg, check_args, parse_args
from federated.errors import CheckpointError, ConfigError, DataError, OutputError, TrainingDiverged

USER_ERRORS = (ConfigError, DataError, CheckpointError, TrainingDiverged, OutputError)


def main(argv: list[str] | None = None) -> dict:
    """Run the command line; returns the results dict (or the eval-only record)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    check_args(args)  # before torch is imported: a mistake costs a second, not a minute

    import time

    from dassl.engine import build_trainer
    from dassl.utils import configure_logging, set_random_seed, setup_logger
    from federated import console
    from federated.checkpoint import prepare_output_dir
    from federated.data import build_federated_data
    from federated.results import json_safe
    from federated.run_dir import write_text
    from federated.server import FederatedServer

    started = time.time()
    cfg = build_cfg(args)
    # a refused resume or eval-only, or an unwritable folder, stops here: nothing in OUTPUT_DIR changed
    prepare_output_dir(cfg, resume=bool(args.resume), eval_only=bool(args.eval_only), model_dir=args.model_dir)
    log_path = setup_logger(cfg.OUTPUT_DIR)
    configure_logging(verbose=args.verbose)
    log = logging.getLogger("fedtv")
    for line in console.header(cfg, evaluation=bool(args.eval_only)):
        log.info(line)
    log.debug("config:\n%s", cfg.dump())
    set_random_seed(int(cfg.SEED))
    if args.engine == "flower-sim":
        from federated.flower.simulation import run_flower_simulation

        results = run_flower_simulation(cfg, resume=bool(args.resume))
        log.info(console.where(cfg.OUTPUT_DIR, log_path))
        return results
    data = build_federated_data(cfg, partition=not (args.eval_only and cfg.DATASET.SUBSAMPLE_CLASSES == "new"))
    log.debug(data.summary())
    trainer = build_trainer(cfg, classnames=data.classnames)
    log.debug("trainer %s: %d shared and %d personal tensors (%d trainable parameters)", cfg.TRAINER.NAME,
              len(trainer.shared_keys()), len(trainer.personal_keys()),
              sum(p.numel() for p in trainer.trainable_parameters().values()))
    server = FederatedServer(cfg, trainer, data)
    log.info(console.ready_line(data, str(trainer.device), trainer.precision,
                                None if args.eval_only else server.execution_text(), time.time() - started))
    if args.eval_only:
        record = server.evaluate_saved(args.model_dir)
        path = os.path.join(cfg.OUTPUT_DIR, f"eval_{cfg.DATASET.SUBSAMPLE_CLASSES}.json")
        write_text(path, json.dumps(json_safe(record), indent=2, allow_nan=False))
        log.info(f"{cfg.DATASET.SUBSAMPLE_CLASSES} classes, model of {args.model_dir} after round {record['round']}: "
                 f"{console.metrics_text(record)}")
        log.info(f"results: {path}, log: {log_path}")
        return record
    results = server.run(resume=bool(args.resume))
    log.info(console.where(cfg.OUTPUT_DIR, log_path))
    return results


def cli() -> int:
    """``python federated_main.py``: exit 0, 2 with one line on stderr for a user's mistake, 130 on Ctrl-C."""
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted: finished rounds are in the checkpoint; continue with --resume", file=sys.stderr)
        return 130
    except Exception as err:
        if not isinstance(err, USER_ERRORS) and not isinstance(err, _clip_weights_unavailable()):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _clip_weights_unavailable() -> type[Exception] | tuple[()]:
    """Imported only after an error (clip imports torch; an error before that is not this one)."""
    if "clip" not in sys.modules:
        return ()
    from clip import ClipWeightsUnavailable

    return ClipWeightsUnavailable
