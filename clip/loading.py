"""``load_clip``: build a frozen open_clip ``CLIP`` and fill it from a pretrained tag, a local file, or nothing.

Weights are always loaded on CPU in fp32 with ``load_state_dict(strict=True)``, then moved to ``device``.
Building the architecture happens inside ``torch.random.fork_rng`` so that loading a CLIP never changes the
caller's global CPU random stream.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import open_clip
import torch
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from open_clip.convert import convert_state_dict

from .checkpoints import OPENAI_EXTRA_KEYS, Checkpoint, describe_state_dict, read_checkpoint
from .names import (
    DEFAULT_WEIGHTS,
    default_weights,
    is_openai_architecture,
    normalize_backbone_name,
    pretrained_tags,
    register_model_configs,
    supported_backbones,
)

logger = logging.getLogger("fedtv.clip")

WEIGHTS_HINT = (
    "pass a local file with `--clip-weights PATH` or the config option `MODEL.BACKBONE.WEIGHTS PATH` "
    "(in Python: load_clip(..., weights=PATH))"
)


class ClipWeightsUnavailable(RuntimeError):
    """The requested CLIP weights are not on this machine and cannot be downloaded."""


@dataclass
class LoadedCLIP:
    """A frozen CLIP and what callers need to use it.

    ``model``: open_clip ``CLIP`` in eval mode, every parameter ``requires_grad=False``, fp32.
    ``tokenize``: ``list[str] -> LongTensor (n, context_length)`` (CPU).
    ``name``: canonical open_clip model name (``"ViT-B-16"``, ``"tiny"``).
    ``image_size``: input side in pixels. ``mean`` / ``std``: the RGB normalisation the weights expect.
    ``context_length``: text tokens per prompt. ``embed_dim``: joint embedding size.
    ``weights_source``: the tag, the absolute file path, or ``"random"``.
    ``quick_gelu``: whether the towers use QuickGELU (OpenAI's activation) instead of GELU.
    """

    model: open_clip.CLIP
    tokenize: Callable[[Sequence[str]], torch.Tensor]
    name: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    context_length: int
    embed_dim: int
    weights_source: str
    quick_gelu: bool = False


class ClipTokenizer:
    """open_clip's tokenizer for a model: ``__call__(texts) -> LongTensor (n, context_length)``."""

    def __init__(self, name: str, context_length: int) -> None:
        self.name = name
        self.context_length = context_length
        self._tokenizer = _open_clip_tokenizer(name, context_length)

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Tokenize ``texts`` (a string or a list of n strings) -> LongTensor (n, context_length), truncated."""
        if isinstance(texts, str):
            texts = [texts]
        return self._tokenizer(list(texts)).long()

    def __repr__(self) -> str:
        return f"ClipTokenizer({self.name!r}, context_length={self.context_length})"


@functools.lru_cache(maxsize=8)
def _open_clip_tokenizer(name: str, context_length: int) -> Callable:
    return open_clip.get_tokenizer(name, context_length=context_length)


class _DropRandomInitNotice(logging.Filter):
    """Hide open_clip's root-logger "initialized randomly" notice: we load the weights ourselves."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    root = logging.getLogger()
    flt = _DropRandomInitNotice()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def _config_quick_gelu(name: str) -> bool:
    return bool((open_clip.get_model_config(name) or {}).get("quick_gelu", False))


def _meta_clip(name: str) -> torch.nn.Module:
    """The architecture on the meta device (no memory, no init cost): for checking key sets and shapes."""
    with torch.device("meta"), _quiet_open_clip():
        return open_clip.create_model(name, pretrained=None, load_weights=False, device="meta")


def build_clip(name: str, quick_gelu: bool = False, seed: int | None = None,
               preprocess: dict | None = None) -> open_clip.CLIP:
    """Build the randomly initialised fp32 CPU ``CLIP`` for canonical ``name`` (global RNG left untouched).

    ``preprocess``: normalisation of the weights to come (``mean``, ``std``, ... of a pretrained tag's cfg or
    a file's metadata), set on the model by open_clip over its defaults; the input size is the model's."""
    register_model_configs()
    overlay = {k: v for k, v in (preprocess or {}).items() if k != "size"}
    with torch.random.fork_rng(devices=[]), _quiet_open_clip():
        if seed is not None:
            torch.manual_seed(seed)
        model = open_clip.create_model(
            name, pretrained=None, load_weights=False, precision="fp32", device="cpu", quick_gelu=quick_gelu,
            force_preprocess_cfg=overlay,
        )  # quick_gelu as a model kwarg overrides the config either way (force_quick_gelu can only turn it on)
    if not isinstance(model, open_clip.CLIP):
        raise ValueError(f"CLIP backbone {name!r} builds a {type(model).__name__}, not an open_clip CLIP.")
    return model


def _prepare_state_dict(sd: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Drop OpenAI's non-weight entries and fix a scalar/1-d ``logit_scale``. (Tensors keep their dtype:
    ``load_state_dict`` copies them into the fp32 parameters, which casts fp16/bf16 exactly.)"""
    target = model.state_dict()
    out = {}
    for k, v in sd.items():
        if k in OPENAI_EXTRA_KEYS and k not in target:
            continue
        if k in ("logit_scale", "logit_bias") and k in target and v.shape != target[k].shape:
            if v.numel() == target[k].numel():
                v = v.reshape(target[k].shape)
        out[k] = v
    return out


def _fmt_keys(keys: Sequence[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def _guess_backbones(sd: dict[str, torch.Tensor], exclude: str) -> list[str]:
    """Backbones whose state-dict key set and shapes equal ``sd``'s (cheap: built on the meta device)."""
    want = {k: tuple(v.shape) for k, v in sd.items() if k not in OPENAI_EXTRA_KEYS}
    pos = want.get("positional_embedding")
    if pos is None or len(pos) != 2:
        return []
    hits = []
    candidates = []
    for n in supported_backbones():
        if n == exclude or n.endswith("-quickgelu"):
            continue
        text_cfg = open_clip.get_model_config(n)["text_cfg"]
        # cheap pre-filter on the text tower before building anything
        if (text_cfg.get("context_length", 77), text_cfg.get("width", 512)) == pos:
            candidates.append(n)
    for name in candidates:
        try:
            got = {k: tuple(v.shape) for k, v in _meta_clip(name).state_dict().items()}
        except Exception:  # noqa: BLE001 - timm towers etc. may not build on meta; skip them
            continue
        if got == want:
            hits.append(name)
    return hits


def check_compatible(model: torch.nn.Module, ckpt: Checkpoint, backbone: str) -> dict[str, torch.Tensor]:
    """Return the checkpoint's state dict made ready for ``model`` (fp32), or raise a clear ``ValueError``
    naming the file, the backbone and some missing / unexpected / mis-shaped keys. ``model`` may be on meta."""
    sd = _prepare_state_dict(ckpt.state_dict, model)
    target = model.state_dict()
    missing = [k for k in target if k not in sd]
    unexpected = [k for k in sd if k not in target]
    mismatched = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
        for k in target
        if k in sd and sd[k].shape != target[k].shape
    ]
    if missing or unexpected or mismatched:
        lines = [f"CLIP weights file {ckpt.path} ({ckpt.format}) does not match the CLIP architecture {backbone!r}:"]
        if missing:
            lines.append(f"  {len(missing)} missing key(s): {_fmt_keys(missing)}")
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected key(s): {_fmt_keys(unexpected)}")
        if mismatched:
            lines.append(f"  {len(mismatched)} shape mismatch(es): {_fmt_keys(mismatched, 3)}")
        desc = describe_state_dict(ckpt.state_dict)
        if desc:
            lines.append(f"  The file looks like: {desc}.")
        guesses = _guess_backbones(ckpt.state_dict, backbone)
        if guesses:
            lines.append(f"  It matches backbone(s): {', '.join(guesses)}.")
        lines.append("  Choose the backbone the weights were trained with (MODEL.BACKBONE.NAME), or other weights.")
        raise ValueError("\n".join(lines))
    return sd


def load_state_dict_checked(model: torch.nn.Module, ckpt: Checkpoint, backbone: str) -> None:
    """``model.load_state_dict(strict=True)`` with a clear ``ValueError`` on any key or shape mismatch."""
    sd = check_compatible(model, ckpt, backbone)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:  # dtype oddities etc.; keys and shapes were checked above
        raise ValueError(f"CLIP weights file {ckpt.path} cannot be loaded into {backbone!r}: {e}") from e


def _is_offline() -> bool:
    """True when Hugging Face offline mode is on (read at call time, unlike huggingface_hub's constant)."""
    truthy = {"1", "ON", "YES", "TRUE"}
    if any(os.environ.get(v, "").strip().upper() in truthy for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # noqa: BLE001
        return False


def _hub_candidates(hf_hub: str) -> tuple[str, list[str]]:
    """(repo_id, filenames in open_clip's order of preference) for a pretrained cfg's ``hf_hub`` entry."""
    repo_id, filename = os.path.split(hf_hub)
    if not filename:
        return repo_id, [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    if filename.endswith((".bin", ".pth")):
        return repo_id, [filename[:-4] + ".safetensors", filename]
    return repo_id, [filename]


def _find_cached(cfg: dict, cache_dir: str | None) -> str | None:
    """The cached file for a pretrained cfg without any network access (open_clip's cache layout)."""
    if cfg.get("file") and os.path.isfile(cfg["file"]):
        return cfg["file"]
    if cfg.get("hf_hub"):
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo_id, files = _hub_candidates(cfg["hf_hub"])
            for fname in files:
                hit = try_to_load_from_cache(repo_id, fname, cache_dir=cache_dir)
                if isinstance(hit, str) and os.path.isfile(hit):
                    return hit
    if cfg.get("url"):
        path = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(cfg["url"]))
        if os.path.isfile(path):
            return path
    return None


def _unavailable(name: str, tag: str, cfg: dict, cache_dir: str | None, reason: str) -> ClipWeightsUnavailable:
    needed = []
    if cfg.get("hf_hub"):
        repo_id, files = _hub_candidates(cfg["hf_hub"])
        hub_cache = cache_dir or os.environ.get("HF_HUB_CACHE") or "~/.cache/huggingface/hub"
        needed.append(
            f"{' or '.join(files)} of the Hugging Face Hub repo {repo_id} (open_clip's hub cache: {hub_cache})"
        )
    if cfg.get("url"):
        src = "OpenAI's CLIP download" if "openaipublic" in cfg["url"] else "the download"
        needed.append(
            f"{os.path.basename(cfg['url'])} from {src} {cfg['url']} "
            f"(normally cached in {cache_dir or '~/.cache/clip'})"
        )
    return ClipWeightsUnavailable(
        f"The {tag!r} weights of CLIP {name} are not available: {reason}.\n"
        f"Needed file: {'; or '.join(needed) or 'unknown'}.\n"
        f"Copy that file to this machine and {WEIGHTS_HINT}. weights='none' gives a random CLIP (tests only)."
    )


def resolve_pretrained_tag(name: str, tag: str, cache_dir: str | None = None) -> tuple[str, dict]:
    """Download (or find in cache) the file of open_clip pretrained ``tag`` for ``name``; return (path, cfg).

    Uses open_clip's own ``download_pretrained`` (same caches as open_clip). In offline mode
    (``HF_HUB_OFFLINE=1``) only the caches are looked at, so this fails fast. Raises ``ValueError`` for an
    unknown tag and ``ClipWeightsUnavailable`` when the file cannot be had.
    """
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        tags = pretrained_tags(name)
        raise ValueError(
            f"{tag!r} is neither an existing file nor a pretrained tag open_clip knows for CLIP {name}. "
            f"Known tags for {name}: {', '.join(tags) if tags else '(none)'}."
        )
    if _is_offline():
        path = _find_cached(cfg, cache_dir)
        if path is None:
            raise _unavailable(name, tag, cfg, cache_dir, "offline mode (HF_HUB_OFFLINE=1) and not in any cache")
        return path, cfg
    try:
        path = open_clip.download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as e:  # noqa: BLE001 - network/hub errors of every kind
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise _unavailable(name, tag, cfg, cache_dir, f"download failed ({first})") from e
    if not path or not os.path.isfile(path):
        raise _unavailable(name, tag, cfg, cache_dir, "open_clip returned no file")
    return path, cfg


def _looks_like_path(weights: str) -> bool:
    return (
        os.sep in weights
        or "/" in weights
        or weights.startswith(("~", "."))
        or weights.lower().endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".tar"))
    )


def _auto_quick_gelu(name: str, ckpt: Checkpoint) -> tuple[bool, str]:
    """Pick the activation for weights read from a file; returns (quick_gelu, reason)."""
    if _config_quick_gelu(name):
        return True, f"the {name} config says so"
    meta = ckpt.metadata.get("quick_gelu")
    if meta is not None:
        return meta.strip().lower() in ("1", "true", "yes"), "the safetensors metadata says so"
    if ckpt.format == "torchscript":
        return True, "an OpenAI TorchScript archive holds OpenAI weights, trained with QuickGELU"
    if ckpt.format != "open_clip_checkpoint" and is_openai_architecture(name):
        return True, f"{name} is an OpenAI architecture, so a bare state dict is taken for OpenAI's weights"
    return False, "open_clip's default for this config (GELU)"


def _norm_from_metadata(meta: dict[str, str], key: str) -> tuple[float, ...] | None:
    if key not in meta:
        return None
    try:
        vals = tuple(float(x) for x in json.loads(meta[key]))
    except (ValueError, TypeError):
        return None
    return vals if len(vals) == 3 else None


def _finish(model: open_clip.CLIP, name: str, device: str | torch.device, weights_source: str,
            quick_gelu: bool) -> LoadedCLIP:
    pp = model.visual.preprocess_cfg  # open_clip's defaults, the model's input size, build_clip's preprocess
    model.eval()
    model.requires_grad_(False)
    model.to(device)
    size = model.visual.image_size
    image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
    cfg = open_clip.get_model_config(name)
    ctx = int(model.context_length)
    return LoadedCLIP(
        model=model,
        tokenize=ClipTokenizer(name, ctx),
        name=name,
        image_size=image_size,
        mean=tuple(float(x) for x in pp["mean"]),
        std=tuple(float(x) for x in pp["std"]),
        context_length=ctx,
        embed_dim=int(cfg["embed_dim"]),
        weights_source=weights_source,
        quick_gelu=quick_gelu,
    )


def load_clip(
    backbone: str,
    weights: str = "",
    device: str | torch.device = "cpu",
    cache_dir: str | None = None,
    *,
    quick_gelu: bool | None = None,
) -> LoadedCLIP:
    """Load a frozen CLIP.

    Args:
        backbone: ``RN50``, ``RN101``, ``ViT-B/32``, ``ViT-B/16``, ``ViT-L/14`` (slash or dashed), any
            open_clip CLIP model name, or ``tiny``.
        weights: ``""`` = the backbone's default (``openai``; ``clip/weights/tiny_toyworld.safetensors`` for
            ``tiny``); an open_clip pretrained tag; a local file (OpenAI TorchScript archive, torch.save state
            dict, open_clip checkpoint, safetensors); or ``"none"`` for random weights (tests only).
        device: where the model ends up (loading happens on CPU, fp32).
        cache_dir: download cache for pretrained tags (open_clip's default caches when ``None``).
        quick_gelu: force QuickGELU (``True``) or GELU (``False``); ``None`` decides: the tag's setting for a
            tag, QuickGELU for OpenAI files (TorchScript, or a bare state dict / safetensors of an OpenAI
            architecture), the config's setting otherwise (safetensors metadata ``quick_gelu`` wins).

    Raises:
        ValueError: unknown backbone or tag, or a file that is missing, not a checkpoint, or does not match.
        ClipWeightsUnavailable: the tag's file (or ``tiny``'s default file) is not on this machine.
    """
    name = normalize_backbone_name(backbone)
    weights = (weights or "").strip()
    if weights.lower() == "none":
        qg = _config_quick_gelu(name) if quick_gelu is None else quick_gelu
        # a fixed seed: every process (server, clients, Flower nodes) builds the same random CLIP
        model = build_clip(name, quick_gelu=qg, seed=0)
        logger.warning(
            "CLIP %s has RANDOM weights (weights='none'): its features are meaningless and every result "
            "is meaningless except for tests.",
            name,
        )
        return _finish(model, name, device, "random", qg)

    if not weights:
        weights = default_weights(name)
        if name in DEFAULT_WEIGHTS and not os.path.isfile(weights):
            raise ClipWeightsUnavailable(
                f"The default weights of the toy-world CLIP {name!r} are missing: {weights} does not exist. "
                f"They are the toy-world pretraining's output, shipped with the repository as "
                f"clip/{DEFAULT_WEIGHTS[name]}. Restore that file, or {WEIGHTS_HINT}; "
                f"weights='none' gives a random CLIP (tests only)."
            )

    if os.path.exists(os.path.expanduser(weights)) or _looks_like_path(weights):
        ckpt = read_checkpoint(weights)
        if quick_gelu is None:
            qg, why = _auto_quick_gelu(name, ckpt)
            logger.debug(
                "CLIP %s from %s (%s): %s because %s.", name, ckpt.path, ckpt.format, "QuickGELU" if qg else "GELU", why
            )
        else:
            qg = quick_gelu
        check_compatible(_meta_clip(name), ckpt, name)  # fail before paying for a random init
        norms = {key: _norm_from_metadata(ckpt.metadata, key) for key in ("mean", "std")}
        model = build_clip(name, quick_gelu=qg, preprocess={k: v for k, v in norms.items() if v is not None})
        load_state_dict_checked(model, ckpt, name)
        logger.debug("Loaded CLIP %s weights from %s (%s).", name, ckpt.path, ckpt.format)
        return _finish(model, name, device, ckpt.path, qg)

    path, cfg = resolve_pretrained_tag(name, weights, cache_dir)
    qg = (bool(cfg.get("quick_gelu", False)) or _config_quick_gelu(name)) if quick_gelu is None else quick_gelu
    ckpt = read_checkpoint(path)
    meta = _meta_clip(name)
    ckpt.state_dict = convert_state_dict(meta, ckpt.state_dict)  # open_clip's 3rd-party key conversions
    check_compatible(meta, ckpt, name)
    model = build_clip(name, quick_gelu=qg, preprocess=cfg)
    load_state_dict_checked(model, ckpt, name)
    logger.debug("Loaded CLIP %s weights %r from %s.", name, weights, path)
    return _finish(model, name, device, weights, qg)


def make_random_clip(backbone: str = "tiny", seed: int = 0) -> LoadedCLIP:
    """A randomly initialised frozen CLIP for tests: same ``seed`` -> identical weights. Logs one line."""
    name = normalize_backbone_name(backbone)
    qg = _config_quick_gelu(name)
    model = build_clip(name, quick_gelu=qg, seed=seed)
    logger.warning("Using a RANDOM %s CLIP (seed=%d): for tests only.", name, seed)
    return _finish(model, name, "cpu", "random", qg)


__all__ = [
    "ClipTokenizer",
    "ClipWeightsUnavailable",
    "LoadedCLIP",
    "build_clip",
    "check_compatible",
    "load_clip",
    "load_state_dict_checked",
    "make_random_clip",
    "resolve_pretrained_tag",
]
