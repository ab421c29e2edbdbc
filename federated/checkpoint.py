"""Round checkpoints: written atomically after every round, loadable with ``weights_only=True``.

Content: ``round`` (rounds finished), ``trainer``, ``num_users``, ``global`` (shared tensors),
``personal`` (one dict of personal tensors per client), ``client_global`` (personalised
aggregation: the shared tensors a client downloads instead of ``global``), ``side_information`` (what each
client sent once about its data), ``memory`` (the method's server-step memory), ``rng`` (python / numpy /
torch states), ``results`` (the results so far) and ``signature`` (key -> shape, to detect a mismatched
model): the run state (``federated/run_state.py``) plus the RNG.
A Flower run adds ``engine = "flower"`` and its ``experiment`` token (``federated/flower/strategy.py``):
its personal tensors live on the nodes, so its ``personal`` entries are empty and only a Flower run can
resume it (for a trainer with personal tensors; checkpoints without ``engine`` are in-process ones).
"""
from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

from dassl.config import RETIRED_KEYS
from dassl.utils.atomic import remove_stale_temps
from federated.errors import CheckpointError
from federated.results import cfg_to_dict
from federated.run_dir import check_writable, save_torch

CHECKPOINT_NAME = "checkpoint.pt"


def rng_state() -> dict:
    """Python, numpy and torch RNG states, as tensors / lists (``weights_only``-safe)."""
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])


def signature(trainer) -> dict[str, list[int]]:
    """Shared and personal keys with their shapes (personal: client 0's starting shapes, which do not depend
    on the client the model last held)."""
    params = dict(trainer.model.named_parameters())
    shapes = {k: list(params[k].shape) for k in trainer.shared_keys()}
    shapes.update({k: list(v.shape) for k, v in trainer.initial_personal_state(0).items()})
    return shapes


def save_checkpoint(path: str, *, state, trainer, num_users: int, extra: dict | None = None) -> None:
    """Write the checkpoint of ``state`` (a ``federated.run_state.RunState``) atomically; ``extra``: further
    entries (the Flower engine's)."""
    save_torch({
        "round": state.rounds_done,
        "trainer": type(trainer).__name__,
        "num_users": num_users,
        "signature": signature(trainer),
        "global": state.global_state,
        "personal": state.personal,
        "client_global": {str(k): v for k, v in state.client_global.items()},
        "side_information": {str(k): v for k, v in state.side_information.items()},
        "memory": state.memory,
        "optimizer": {str(k): v for k, v in state.optimizer.items()},
        "rng": rng_state(),
        "results": state.results,
        **(extra or {}),
    }, path)


def _why_unreadable(err: Exception) -> str:
    """What a failed ``torch.load(weights_only=True)`` says about the file, without torch's advice to
    retry unsafely."""
    text = str(err)
    if "Unsupported global" in text:
        name = text.split("GLOBAL ", 1)[-1].split(" was not", 1)[0].strip()
        return f"it holds a pickled Python object ({name}) besides tensors, which FedTV never loads"
    if "failed finding central directory" in text or "zip archive" in text or "Unsupported operand" in text:
        return "not a torch checkpoint file (corrupt, truncated or another kind of file)"
    return f"{type(err).__name__}: {text.splitlines()[0] if text else 'unreadable'}"


def read_checkpoint(path: str, mmap: bool = False) -> dict:
    """The checkpoint file ``path`` (tensors and plain containers only: ``weights_only=True``, nothing in it
    runs); ``mmap``: map the tensors lazily (to read its config and round cheaply).

    Raises:
        CheckpointError: no such file, or not a FedTV checkpoint (the message says why, and never suggests
            an unsafe way to load it).
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}: pass the OUTPUT_DIR of a run (it holds {CHECKPOINT_NAME})")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - any failure to read means it is not one of our checkpoints
        raise CheckpointError(f"{path} is not a readable FedTV checkpoint: {_why_unreadable(err)}") from None
    if not isinstance(ckpt, dict) or "signature" not in ckpt:
        raise CheckpointError(f"{path} is not a FedTV checkpoint (no 'signature' entry)")
    return ckpt


def load_checkpoint(path: str, trainer, num_users: int, engine: str = "inprocess", cfg=None) -> dict:
    """Load and validate a checkpoint against ``trainer``, the number of clients, for a trainer with
    personal tensors the ``engine`` that will use it (``inprocess`` or ``flower``) and, for a resume,
    the run's config ``cfg`` (``check_resume_config``; the allowed changes are returned as
    ``ckpt["config_changes"]``)."""
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    ckpt = read_checkpoint(path)
    name = type(trainer).__name__
    if ckpt["trainer"] != name:
        raise CheckpointError(f"{path} was written by trainer {ckpt['trainer']}, this run uses {name}")
    expected = signature(trainer)
    got = ckpt["signature"]
    if got != expected:
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        shapes = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
        detail = "; ".join(
            part for part in (
                f"missing {missing[:5]}" if missing else "",
                f"unexpected {extra[:5]}" if extra else "",
                "shape differs for " + ", ".join(f"{k} {got[k]} vs {expected[k]}" for k in shapes[:5])
                if shapes else "",
            ) if part
        )
        raise CheckpointError(f"{path} does not match the {name} model of this run ({detail}); "
                              "use the same trainer settings (N_CTX, CSC, backbone, ranks ...) as the saved run")
    if ckpt["num_users"] != num_users:
        raise CheckpointError(f"{path} holds {ckpt['num_users']} clients, this run has {num_users} (--num-users)")
    written_by = ckpt.get("engine", "inprocess")
    if written_by != engine and trainer.personal_keys():
        how = "--engine inprocess" if written_by == "inprocess" else "--engine flower-sim or flwr run with --resume"
        raise CheckpointError(f"{path} was written by a {written_by} run of {name}, whose personal tensors "
                              f"{'live on the Flower nodes' if written_by == 'flower' else 'the Flower nodes lack'}; "
                              f"this is a {engine} run: use {how}")
    if cfg is not None:
        ckpt["config_changes"] = check_resume_config(ckpt, cfg, path)
    return ckpt


#: Config keys a resumed run may change: none can alter the finished rounds. More rounds (never fewer than
#: the checkpoint finished), evaluation frequency and progress display, and where things are (the output,
#: data, weights and cache locations: the same files found at another path).
RESUMABLE_CHANGES = ("OPTIM.ROUND", "TEST.EVAL_FREQ", "FED.SHOW_PROGRESS", "OUTPUT_DIR", "DATASET.ROOT",
                     "MODEL.BACKBONE.WEIGHTS", "FED.CACHE_DIR")


def _flat(node: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in node.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_resume_config(ckpt: dict, cfg, path: str) -> dict[str, list]:
    """Compare the config a checkpoint was written with (``ckpt["results"]["config"]``) with this run's
    ``cfg``, as both engines do before a resume.

    Returns:
        The allowed changes (``RESUMABLE_CHANGES``), ``{key: [saved value, new value]}``, to record in
        ``results.json``.

    Keys since left out of the defaults (``dassl.config.RETIRED_KEYS``: nothing read them) are not compared.

    Raises:
        CheckpointError: listing every other key that differs (saved -> new), or fewer ``OPTIM.ROUND``
            than the checkpoint finished.
    """
    saved, now = _flat(ckpt["results"]["config"]), _flat(cfg_to_dict(cfg))
    saved = {k: v for k, v in saved.items() if k not in RETIRED_KEYS}  # written before they were left out
    differ = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    refused = [k for k in differ if k not in RESUMABLE_CHANGES]
    if refused:
        detail = ", ".join(f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in refused)
        raise CheckpointError(f"{path} was written with another config ({detail}); resume with the saved run's "
                              f"settings (only {', '.join(RESUMABLE_CHANGES)} may change) or start a new run in "
                              f"another --output-dir")
    done = int(ckpt["round"])
    if int(cfg.OPTIM.ROUND) < done and "OPTIM.ROUND" in differ:
        raise CheckpointError(f"{path} has finished {done} rounds: --rounds {cfg.OPTIM.ROUND} would discard some; "
                              f"resume with --rounds {done} or more")
    return {k: [saved.get(k), now.get(k)] for k in differ}


def prepare_output_dir(cfg, *, resume: bool = False, eval_only: bool = False, model_dir: str | None = None) -> None:
    """Validate the run before anything in ``cfg.OUTPUT_DIR`` changes (module docstring), then remove the
    temporary files that killed writers left in it.

    Raises:
        CheckpointError: a resume whose checkpoint is unreadable or has another config (every differing
            key is listed); ``--eval-only`` without a readable checkpoint in ``model_dir``.
        OutputError: the output folder cannot be created or written.
    """
    folder = cfg.OUTPUT_DIR
    if eval_only and model_dir:
        path = model_dir if os.path.isfile(model_dir) else os.path.join(model_dir, CHECKPOINT_NAME)
        read_checkpoint(path, mmap=True)
    elif resume and os.path.isfile(os.path.join(folder, CHECKPOINT_NAME)):
        path = os.path.join(folder, CHECKPOINT_NAME)
        check_resume_config(read_checkpoint(path, mmap=True), cfg, path)
    check_writable(folder)
    for path in remove_stale_temps(folder):
        logging.getLogger("fedtv.run_dir").info("removed %s, a temporary file of a writer that no longer runs", path)
