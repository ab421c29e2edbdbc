"""The FedTV ServerApp: builds the experiment from the run config and runs ``FedTVStrategy``.

The server builds the same data and trainer as every node (for the class names, the initial shared
tensors, the aggregator and the zero-shot reference, which it evaluates once on its own copy of the
evaluation sets unless ``FED.ZS_REFERENCE False``). It writes ``results.json``, ``metrics.csv``,
TensorBoard scalars and ``checkpoint.pt`` to ``OUTPUT_DIR`` after every round.

``make_server_app(cfg_text)`` fixes the config (simulation from the command line); the module-level
``app`` (``flwr run``) reads it from the run config (``settings.RUN_CONFIG_DEFAULTS``).
"""
from __future__ import annotations

import logging
import os

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from federated.flower.node import experiment
from federated.flower.settings import cfg_from_run_config, cfg_from_text, run_setting
from federated.flower.strategy import FedTVStrategy
from federated.results import ResultsWriter

logger = logging.getLogger("fedtv.flower")


def run_server(grid: Grid, cfg, run_config: dict) -> dict:
    """Run the experiment of ``cfg`` over the nodes of ``grid``; returns the results dict."""
    from dassl.utils import setup_logger

    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    setup_logger(cfg.OUTPUT_DIR)
    server = experiment(cfg).server
    writer = ResultsWriter(cfg.OUTPUT_DIR, cfg)
    if cfg.FED.ZS_REFERENCE:
        writer.set_zero_shot(server.evaluate_zero_shot())
    strategy = FedTVStrategy(server, writer, round_timeout=run_setting(run_config, "round-timeout"),
                             join_timeout=run_setting(run_config, "join-timeout"),
                             rejoin_wait=run_setting(run_config, "rejoin-wait"),
                             min_clients=run_setting(run_config, "min-clients"))
    strategy.start(grid=grid, initial_arrays=ArrayRecord(strategy.global_state), num_rounds=strategy.rounds,
                   timeout=strategy.round_timeout)
    return server.finish(writer)


def make_server_app(cfg_text: str | None = None, run_config: dict | None = None) -> ServerApp:
    """A ServerApp for the config ``cfg_text`` (YAML) and engine settings ``run_config``, or, with None,
    for the run config of ``flwr run``."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        settings = dict(context.run_config) if run_config is None else run_config
        if cfg_text is not None:
            cfg = cfg_from_text(cfg_text)
        else:
            cfg = cfg_from_run_config(settings, run_setting(settings, "data-root"),
                                      run_setting(settings, "clip-weights"))
        run_server(grid, cfg, settings)

    return server_app


app = make_server_app()
