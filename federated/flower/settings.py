"""Configuration of Flower runs: yacs stays the single source of truth.

The run config (``[tool.flwr.app.config]`` in ``pyproject.toml``, or ``flwr run --run-config``)
carries scalars only: the dataset and trainer YAML paths (relative paths are relative to the app
directory), an ``opts`` string of ``federated_main.py`` flags and ``KEY VALUE`` overrides, and the
engine settings (timeouts, minimum number of clients). Each SuperNode's ``--node-config`` carries
what is machine-specific: ``client-id``, ``data-root``, ``clip-weights`` and ``state-dir``. The
resolved config is the one ``federated_main.py`` builds from the same files and flags, so a Flower
run and an in-process run of the same arguments use the same config. ``--resume`` in the ``opts``
continues the Flower checkpoint in ``OUTPUT_DIR`` (``resume_requested``); ``--eval-only`` is refused.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass

from yacs.config import CfgNode as CN

from federated.config import REPO_ROOT
from federated.errors import ConfigError

#: Run-config keys and defaults (``pyproject.toml`` repeats them for ``flwr run``).
RUN_CONFIG_DEFAULTS: dict[str, object] = {
    "dataset-config": "configs/datasets/toyworld.yaml",
    "trainer-config": "",  # "" = configs/trainers/<TRAINER>/<backbone>.yaml when it exists
    "opts": "",  # federated_main.py flags and KEY VALUE overrides, e.g. "--trainer PromptFL --rounds 5"
    "data-root": "",  # the ServerApp's data root ("" = the config's DATASET.ROOT)
    "clip-weights": "",  # the ServerApp's CLIP weights ("" = the config's MODEL.BACKBONE.WEIGHTS)
    "round-timeout": 600.0,  # seconds to wait for the replies of one training or evaluation step
    "join-timeout": 300.0,  # seconds to wait, before round 1, for every client's node to connect
    "rejoin-wait": 0.0,  # seconds to wait, before a later round, for a sampled client whose node is gone
    "min-clients": 1,  # fewest successful training replies that still make a round
}


def _path(value: str) -> str:
    value = os.path.expanduser(str(value))
    return value if os.path.isabs(value) else os.path.join(REPO_ROOT, value)


def run_setting(run_config: dict, key: str):
    """``run_config[key]`` or its default, converted to the default's type."""
    default = RUN_CONFIG_DEFAULTS[key]
    value = run_config.get(key, default)
    try:
        return type(default)(value)
    except (TypeError, ValueError):
        raise ConfigError(f"run config '{key}' must be a {type(default).__name__}, got {value!r}") from None


def _run_args(run_config: dict, data_root: str = "", clip_weights: str = ""):
    """``federated.cli.parse_args`` of the run config's YAML files and ``opts``, then this machine's
    ``data_root`` / ``clip_weights`` when given."""
    from federated.cli import parse_args

    argv = ["--dataset-config-file", _path(run_setting(run_config, "dataset-config"))]
    trainer_cfg = run_setting(run_config, "trainer-config")
    if trainer_cfg:
        argv += ["--config-file", _path(trainer_cfg)]
    opts = shlex.split(run_setting(run_config, "opts"))
    local = []
    if data_root:
        local += ["DATASET.ROOT", os.path.expanduser(data_root)]
    if clip_weights:
        local += ["MODEL.BACKBONE.WEIGHTS", clip_weights if clip_weights == "none" else _path(clip_weights)]
    try:
        args = parse_args([*argv, *opts, *local])  # local KEY VALUE pairs end the opts: they win
    except SystemExit:
        raise ConfigError(f"run config 'opts' is not valid federated_main.py arguments: {opts}") from None
    if args.eval_only:
        raise ConfigError("--eval-only is not available in Flower runs (run config 'opts'): evaluate a "
                          "checkpoint with federated_main.py --eval-only")
    return args


def cfg_from_run_config(run_config: dict, data_root: str = "", clip_weights: str = "") -> CN:
    """The frozen yacs config of a run: ``federated.cli.build_cfg`` of the run config's YAML files and
    ``opts``, then this machine's ``data_root`` / ``clip_weights`` when given."""
    from federated.cli import build_cfg

    return build_cfg(_run_args(run_config, data_root, clip_weights))


def resume_requested(run_config: dict) -> bool:
    """Whether the run config's ``opts`` ask to continue the checkpoint in ``OUTPUT_DIR`` (``--resume``)."""
    return bool(_run_args(run_config).resume)


def cfg_to_text(cfg: CN) -> str:
    """The full config as YAML (travels to simulation actors as a string)."""
    return cfg.dump()


def cfg_from_text(text: str) -> CN:
    cfg = CN.load_cfg(text)
    cfg.freeze()
    return cfg


@dataclass(frozen=True)
class NodeIdentity:
    """Who a SuperNode is: its FedTV client id and its machine-specific paths."""

    client_id: int
    data_root: str = ""
    clip_weights: str = ""
    state_dir: str = ""


def node_identity(node_config: dict) -> NodeIdentity:
    """Read ``client-id`` (or the simulation's ``partition-id``), ``data-root``, ``clip-weights`` and
    ``state-dir`` from a SuperNode's node config."""
    cid = node_config.get("client-id", node_config.get("partition-id"))
    if cid is None:
        raise ConfigError("the SuperNode has no client id: start it with --node-config \"client-id=<k>\"")
    try:
        cid = int(cid)
    except (TypeError, ValueError):
        raise ConfigError(f"node config client-id must be an integer, got {cid!r}") from None
    return NodeIdentity(cid, str(node_config.get("data-root", "")), str(node_config.get("clip-weights", "")),
                        str(node_config.get("state-dir", "")))
