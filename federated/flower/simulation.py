"""``federated_main.py --engine flower-sim``: the experiment through Flower's simulation runtime.

One virtual SuperNode per client (``partition-id`` = client id), one CPU per ClientApp actor, no GPU
share unless ``USE_CUDA`` and a GPU is present. The config travels to the apps as YAML text, so the
nodes use exactly the command line's config. ``resume`` continues the Flower checkpoint in
``OUTPUT_DIR`` (``server_app.run_server``); the virtual nodes' personal state is on disk under
``OUTPUT_DIR/flower_nodes``. Returns the ``results.json`` the ServerApp wrote.
"""
from __future__ import annotations

import json
import os

from federated.flower.settings import RUN_CONFIG_DEFAULTS, cfg_to_text

#: Environment for offline runs: no telemetry, no update check, no dependency installation.
OFFLINE_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
               "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "RAY_DEDUP_LOGS": "0"}


def gpu_share(cfg, num_users: int) -> float:
    """The GPU fraction each ClientApp actor gets: ``1 / num_users`` with ``USE_CUDA`` and a GPU, else 0."""
    import torch

    return 1.0 / num_users if cfg.USE_CUDA and torch.cuda.is_available() else 0.0


class _NotForUsers:
    """Drops Flower's notice that ``run_simulation`` is deprecated: in the pinned Flower 1.41 it is the
    only simulation that runs the ServerApp in this process (so its exceptions reach the caller and a
    failed run ends with the real error); ``flwr run``, its successor, starts a detached SuperLink and is
    what ``tools/flower_deploy.py`` uses. A user cannot act on the notice."""

    @staticmethod
    def filter(record) -> bool:
        return not (str(record.msg).startswith("DEPRECATED FEATURE")
                    and "run_simulation" in " ".join(map(str, record.args or ())))


def quiet_flower() -> None:
    """Flower's own lines once, and only what a user should act on: its round summaries repeat ours
    (INFO), so its logger shows warnings only and does not pass them on to the root logger (which
    would print them a second time); Ray's tip about accelerator variables and the deprecation notice
    of the simulation API (``_NotForUsers``) are not for our users."""
    import logging
    import warnings

    flwr = logging.getLogger("flwr")
    flwr.setLevel(logging.WARNING)
    flwr.propagate = False
    if not any(isinstance(f, _NotForUsers) for f in flwr.filters):
        flwr.addFilter(_NotForUsers())
    warnings.filterwarnings("ignore", message="Tip: In future versions of Ray", category=FutureWarning)


def run_flower_simulation(cfg, num_cpus_per_client: float = 1.0, resume: bool = False) -> dict:
    """Run (``resume``: continue) ``cfg`` (frozen yacs config) on Flower's simulation; returns the results."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    from flwr.simulation import run_simulation

    quiet_flower()

    from federated.coordinator import Coordinator
    from federated.flower.client_app import make_client_app
    from federated.flower.node import experiment
    from federated.flower.server_app import load_flower_checkpoint, make_server_app

    text = cfg_to_text(cfg)
    settings = {**RUN_CONFIG_DEFAULTS, "join-timeout": 0.0}  # every virtual node exists from the start
    exp = experiment(cfg)  # cached: the ServerApp runs in this process and reuses it
    if resume:
        # a mismatched checkpoint fails here, before Flower starts
        load_flower_checkpoint(Coordinator(cfg, exp.trainer, exp.data), cfg)
    path = os.path.join(cfg.OUTPUT_DIR, "results.json")
    if os.path.isfile(path):
        os.remove(path)  # an earlier run's results must not pass for this run's (a resumed run rewrites them)
    num_users = exp.data.num_users
    gpus = gpu_share(cfg, num_users)
    run_simulation(server_app=make_server_app(text, settings, resume=resume), client_app=make_client_app(text),
                   num_supernodes=num_users,
                   backend_config={"client_resources": {"num_cpus": num_cpus_per_client, "num_gpus": gpus},
                                   # the actors' output (their progress bars, Flower's shutdown notices)
                                   # is not forwarded with "(ClientAppActor pid=...)" prefixes: a client's
                                   # failure reaches the ServerApp as an error reply, which it logs
                                   "init_args": {"num_cpus": max(int(num_cpus_per_client), 1) * 2,
                                                 "include_dashboard": False, "log_to_driver": False}})
    if not os.path.isfile(path):
        raise RuntimeError(f"the Flower simulation wrote no {path}: see the Flower log above")
    with open(path) as f:
        results = json.load(f)
    expected = int(cfg.OPTIM.ROUND) if exp.trainer.trainable_parameters() else 1
    if len(results["rounds"]) < expected:
        raise RuntimeError(f"the Flower simulation stopped after {len(results['rounds'])} of {expected} rounds "
                           f"(see the Flower log above); finished rounds are in {path}")
    return results
