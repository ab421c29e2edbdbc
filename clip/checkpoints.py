"""Reading CLIP checkpoint files of several formats into a plain ``{key: tensor}`` state dict.

Formats, detected from the file's content (never from its name alone):

* ``"torchscript"``: an OpenAI TorchScript archive (what OpenAI's CLIP download is): a zip holding
  ``<archive>/code/`` and ``<archive>/constants.pkl``. Read with ``torch.jit.load(map_location="cpu")``
  then ``.state_dict()``; OpenAI's extra entries ``input_resolution``, ``context_length`` and ``vocab_size``
  are dropped later if the model has no such keys.
* ``"state_dict"``: a bare ``{key: tensor}`` dict saved with ``torch.save`` (zip or legacy pickle format), e.g.
  an OpenAI-style state dict (``visual.conv1.weight``, ``transformer.resblocks.0.attn.in_proj_weight``,
  ``positional_embedding``, ...) or an open_clip hub ``open_clip_pytorch_model.bin``.
* ``"open_clip_checkpoint"``: a ``torch.save`` dict with a ``state_dict`` (or ``model``) entry, as open_clip's
  training writes it; a ``module.`` (DDP) or ``_orig_mod.`` (torch.compile) prefix is stripped.
* ``"safetensors"``: 8-byte little-endian header length followed by a JSON header. Its ``__metadata__`` is
  returned too (``quick_gelu``, ``mean``, ``std`` are honoured by ``load_clip``).

``torch.load`` always runs with ``weights_only=True``. Every failure is a ``ValueError`` naming the file.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

#: Entries of OpenAI's TorchScript state dict that are not weights.
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class Checkpoint:
    """A checkpoint read from disk: ``state_dict`` maps open_clip-style keys to CPU tensors."""

    path: str
    format: str
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def detect_format(path: str | os.PathLike) -> str:
    """Return ``"torchscript"``, ``"torch_save"`` or ``"safetensors"`` from the file's first bytes.

    ``"torch_save"`` is refined into ``"state_dict"`` / ``"open_clip_checkpoint"`` by :func:`read_checkpoint`.
    Raises ``ValueError`` for an empty file or a zip that is not a PyTorch file.
    """
    p = Path(path)
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(16)
    if not head:
        raise ValueError(f"CLIP weights file {p} is empty.")
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        except zipfile.BadZipFile as e:
            raise ValueError(f"CLIP weights file {p} looks like a zip archive but cannot be read: {e}") from e
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "torch_save"
        raise ValueError(
            f"CLIP weights file {p} is a zip archive but neither a TorchScript archive nor a torch.save file."
        )
    if _looks_like_safetensors(head, size):
        return "safetensors"
    return "torch_save"  # legacy (non-zip) torch.save pickle, or garbage: torch.load decides


def _strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _as_tensor_dict(obj: Mapping, path: Path, what: str) -> dict[str, torch.Tensor]:
    bad = [str(k) for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise ValueError(
            f"CLIP weights file {path}: the {what} is not a state dict of tensors "
            f"(non-tensor entries: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''})."
        )
    return dict(obj)


def _read_torchscript(p: Path) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated but is what OpenAI ships
            module = torch.jit.load(str(p), map_location="cpu")
        return {k: v for k, v in module.state_dict().items()}
    except Exception as e:  # noqa: BLE001 - any failure is reported as a bad file
        raise ValueError(f"CLIP weights file {p} looks like a TorchScript archive but cannot be loaded: {e}") from e


def _read_torch_save(p: Path) -> tuple[str, dict[str, torch.Tensor]]:
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = str(e).splitlines() or [type(e).__name__]
        glob = next((ln.strip() for ln in lines if "Unsupported global" in ln), None)
        if glob is not None:
            glob = glob.split(" was not an allowed global")[0].replace("WeightsUnpickler error: ", "")
            raise ValueError(
                f"CLIP weights file {p} holds pickled Python objects, not just tensors; it is refused for safety "
                f"(torch.load weights_only=True). Save `model.state_dict()` (or a safetensors file) instead. "
                f"Detail: {glob}"
            ) from e
        detail = next((ln.strip() for ln in lines if "Unsupported operand" in ln or "load key" in ln), lines[0])
        raise ValueError(f"CLIP weights file {p} is not a PyTorch checkpoint ({detail}).") from e
    except Exception as e:  # noqa: BLE001 - garbage files raise all sorts of errors
        first = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"CLIP weights file {p} is not a PyTorch checkpoint ({type(e).__name__}: {first}).") from e
    if not isinstance(obj, Mapping):
        raise ValueError(f"CLIP weights file {p} holds a {type(obj).__name__}, not a state dict.")
    for key in ("state_dict", "model"):
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner:
            return "open_clip_checkpoint", _strip_prefixes(_as_tensor_dict(inner, p, f"{key!r} entry"))
    return "state_dict", _strip_prefixes(_as_tensor_dict(obj, p, "file"))


def _read_safetensors(p: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(p), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        sd = load_file(str(p), device="cpu")
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"CLIP weights file {p} looks like safetensors but cannot be read: {e}") from e
    return _strip_prefixes(sd), metadata


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a CLIP checkpoint of any supported format into a CPU state dict (dtypes as stored).

    Raises ``ValueError`` naming the file when it does not exist, is not a checkpoint, or holds no tensors.
    """
    p = Path(os.path.abspath(Path(path).expanduser()))
    if not p.is_file():
        what = "is a directory, not a file" if p.is_dir() else "does not exist"
        raise ValueError(f"CLIP weights file {p} {what}.")
    fmt = detect_format(p)
    metadata: dict[str, str] = {}
    if fmt == "torchscript":
        sd = _read_torchscript(p)
    elif fmt == "safetensors":
        sd, metadata = _read_safetensors(p)
    else:
        fmt, sd = _read_torch_save(p)
    if not sd:
        raise ValueError(f"CLIP weights file {p} holds no tensors.")
    return Checkpoint(path=str(p), format=fmt, state_dict=sd, metadata=metadata)


def _count_blocks(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    idx = {k[len(prefix) :].split(".", 1)[0] for k in sd if k.startswith(prefix)}
    return len([i for i in idx if i.isdigit()])


def describe_state_dict(sd: Mapping[str, torch.Tensor]) -> str:
    """A one-line guess of the CLIP architecture a state dict was made from (best effort, "" if unknown)."""
    parts = []
    try:
        if "visual.class_embedding" in sd and "visual.conv1.weight" in sd:
            width = sd["visual.class_embedding"].shape[0]
            patch = sd["visual.conv1.weight"].shape[-1]
            grid = int(round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5))
            layers = _count_blocks(sd, "visual.transformer.resblocks.")
            parts.append(f"ViT image tower (width {width}, patch {patch}, image {grid * patch}px, {layers} layers)")
        elif "visual.attnpool.positional_embedding" in sd:
            stem = sd["visual.conv1.weight"].shape[0]
            layers = [_count_blocks(sd, f"visual.layer{i}.") for i in range(1, 5)]
            grid = int(round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5))
            parts.append(f"ModifiedResNet image tower (width {stem * 2}, layers {layers}, image {grid * 32}px)")
        if "positional_embedding" in sd and "token_embedding.weight" in sd:
            ctx, width = sd["positional_embedding"].shape
            layers = _count_blocks(sd, "transformer.resblocks.")
            parts.append(f"text tower (width {width}, {layers} layers, context length {ctx})")
        if "text_projection" in sd:
            parts.append(f"embed_dim {sd['text_projection'].shape[-1]}")
        elif "text_projection.weight" in sd:
            parts.append(f"embed_dim {sd['text_projection.weight'].shape[0]}")
    except Exception:  # noqa: BLE001 - this is only a hint
        return ""
    return ", ".join(parts)
