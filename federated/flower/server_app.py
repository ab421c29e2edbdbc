"""The FedTV ServerApp: builds the experiment from the run config and runs ``FedTVStrategy``.

The server builds the same data and trainer as every node (for the class names, the initial shared
tensors, the aggregator and the zero-shot reference, which it evaluates once on its own copy of the
evaluation sets unless ``FED.ZS_REFERENCE False``). It writes ``results.json``, ``metrics.csv``,
TensorBoard scalars and ``checkpoint.pt`` to ``OUTPUT_DIR`` after every round.

Resume (``--resume`` in the run config's ``opts``, or ``federated_main.py --engine flower-sim
--resume``): the server loads the Flower checkpoint in ``OUTPUT_DIR`` (refused with a
``CheckpointError`` when it holds another model, another number of clients, an in-process run of a
personalised trainer, or a config that differs in a key other than
``federated.checkpoint.RESUMABLE_CHANGES``: the check the in-process engine shares) and runs only the
remaining rounds (``FedTVStrategy`` continues the restored run state); the nodes keep their personal state in their
``state-dir`` under the checkpoint's experiment token. Without a checkpoint it starts from scratch.

``make_server_app(cfg_text)`` fixes the config (simulation from the command line); the module-level
``app`` (``flwr run``) reads it from the run config (``settings.RUN_CONFIG_DEFAULTS``).
"""
from __future__ import annotations

import logging
import os

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from federated.checkpoint import load_checkpoint, prepare_output_dir
from federated.coordinator import Coordinator
from federated.errors import CheckpointError
from federated.flower.node import experiment
from federated.flower.settings import cfg_from_run_config, cfg_from_text, resume_requested, run_setting
from federated.flower.strategy import FedTVStrategy

logger = logging.getLogger("fedtv.flower")

def load_flower_checkpoint(coordinator: Coordinator, cfg) -> dict | None:
    """The Flower checkpoint in ``OUTPUT_DIR`` validated against this run, or None when there is none."""
    path = coordinator.checkpoint_path
    if not os.path.isfile(path):
        logger.warning("--resume: no checkpoint in %s, starting from scratch", coordinator.output_dir)
        return None
    ckpt = load_checkpoint(path, coordinator.trainer, coordinator.num_users, engine="flower", cfg=cfg)
    if "experiment" not in ckpt:
        raise CheckpointError(f"{path} was not written by a Flower run (no experiment token)")
    return ckpt


def run_server(grid: Grid, cfg, run_config: dict, resume: bool = False) -> dict:
    """Run (``resume``: continue) the experiment of ``cfg`` over the nodes of ``grid``; returns the results."""
    from dassl.utils import configure_logging, setup_logger

    prepare_output_dir(cfg, resume=resume)  # a refused resume changes nothing in OUTPUT_DIR
    setup_logger(cfg.OUTPUT_DIR)
    if not logging.getLogger("fedtv").handlers:  # a deployment's ServerApp process: the run's lines in log.txt
        configure_logging()
        # Flower's lines once: its own handler prints them; the root logger would print them again
        logging.getLogger("flwr").propagate = False
    exp = experiment(cfg)
    coordinator = Coordinator(cfg, exp.trainer, exp.data)
    ckpt = load_flower_checkpoint(coordinator, cfg) if resume else None
    if ckpt is None and os.path.isfile(coordinator.checkpoint_path):
        logger.warning("%s holds an earlier run: it is overwritten (use --resume to continue it)", cfg.OUTPUT_DIR)
    state = coordinator.fresh_state(personal=False) if ckpt is None else coordinator.restored_state(ckpt)
    writer = coordinator.open_results(state, ckpt)
    strategy = FedTVStrategy(coordinator, exp.runtime, state, token=ckpt["experiment"] if ckpt else None,
                             round_timeout=run_setting(run_config, "round-timeout"),
                             join_timeout=run_setting(run_config, "join-timeout"),
                             rejoin_wait=run_setting(run_config, "rejoin-wait"),
                             min_clients=run_setting(run_config, "min-clients"))
    if ckpt is not None:
        writer.write()
        logger.info("resuming %s after round %d (experiment %s)", coordinator.checkpoint_path, strategy.offset,
                    strategy.token)
    elif cfg.FED.ZS_REFERENCE:
        coordinator.set_zero_shot(exp.runtime.evaluate_zero_shot(coordinator.excluded_clients))
    if strategy.remaining_rounds:
        strategy.start(grid=grid, initial_arrays=ArrayRecord(strategy.state.global_state),
                       num_rounds=strategy.remaining_rounds, timeout=strategy.round_timeout)
    return coordinator.finish()


def make_server_app(cfg_text: str | None = None, run_config: dict | None = None, resume: bool = False) -> ServerApp:
    """A ServerApp for the config ``cfg_text`` (YAML), engine settings ``run_config`` and ``resume``, or,
    with None, for the run config of ``flwr run`` (``--resume`` in its ``opts``)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        settings = dict(context.run_config) if run_config is None else run_config
        if cfg_text is not None:
            cfg, resuming = cfg_from_text(cfg_text), resume
        else:
            cfg = cfg_from_run_config(settings, run_setting(settings, "data-root"),
                                      run_setting(settings, "clip-weights"))
            resuming = resume_requested(settings)
        run_server(grid, cfg, settings, resume=resuming)

    return server_app


app = make_server_app()
