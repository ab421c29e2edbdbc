"""Deep prompts inside open_clip's transformers, through forward pre-hooks installed per call.

MaPLe-style deep prompting (Khattak et al., CVPR 2023) changes the hidden states of a few token
positions at the input of transformer blocks ``1 .. J-1`` (block 0 sees the prompts placed in the
input embeddings). Nothing of open_clip is copied or subclassed: the context managers below register
forward pre-hooks on the shared frozen CLIP's ``ResidualAttentionBlock``s (and on the ViT's
``ln_pre``) and remove them on exit, also when the forward raises. Outside the ``with`` block the
frozen CLIP behaves exactly as before, for every other trainer of the process (single-threaded use:
a hook is visible to any forward run by the same modules while the block is active).

Token layout (open_clip runs its blocks batch first ``(B, L, d)`` unless ``batch_first`` is False,
then ``(L, B, d)``; both are handled):

* text tower: prompt tokens at positions ``1 .. n`` (right after SOS), ``text_prompts``;
* vision tower: ``n`` tokens appended after CLS and the patches, after the positional embedding and
  before ``ln_pre`` (they carry no positional embedding), ``vision_prompts``; the class token still
  pools the output, so the appended tokens only act through attention.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from trainers.image_tokens import check_token_vit


def splice(x: torch.Tensor, prompt: torch.Tensor, start: int, batch_first: bool = True) -> torch.Tensor:
    """Replace ``n`` token positions of hidden states by ``prompt``.

    Args:
        x: hidden states ``(B, L, d)`` (batch first) or ``(L, B, d)``.
        prompt: ``(n, d)``, the same for every sequence of the batch.
        start: first replaced position; negative counts from the end (``-n``: the last ``n`` tokens).

    Returns:
        a new tensor shaped like ``x`` (no in-place change, so autograd reaches ``prompt``).
    """
    seq_dim = 1 if batch_first else 0
    length, n = x.shape[seq_dim], prompt.shape[0]
    begin = start % length if start < 0 else start
    if begin + n > length:
        raise ValueError(f"{n} prompt tokens from position {start} do not fit a sequence of {length}")
    batch = x.shape[1 - seq_dim]
    p = prompt.to(x.dtype).unsqueeze(1 - seq_dim)
    p = p.expand(batch, -1, -1) if batch_first else p.expand(-1, batch, -1)
    return torch.cat([x.narrow(seq_dim, 0, begin), p, x.narrow(seq_dim, begin + n, length - begin - n)], dim=seq_dim)


@contextlib.contextmanager
def _hooks(pairs: Sequence[tuple[nn.Module, object]]) -> Iterator[None]:
    """Register ``(module, pre_hook)`` pairs for the duration of the block."""
    handles = []
    try:
        for module, hook in pairs:
            handles.append(module.register_forward_pre_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _replace_hook(prompt: torch.Tensor, start: int, batch_first: bool):
    def hook(_module, args):
        return (splice(args[0], prompt, start, batch_first), *args[1:])

    return hook


def _check_depth(transformer: nn.Module, deep: Sequence[torch.Tensor], tower: str, first_block: int = 1) -> None:
    layers = len(transformer.resblocks)
    if first_block + len(deep) > layers:
        raise ValueError(f"{len(deep)} deep prompts (PROMPT_DEPTH {len(deep) + 1}) need more than the "
                         f"{layers} blocks of the {tower} tower: set PROMPT_DEPTH <= {layers}")


def deep_prompt_hooks(transformer: nn.Module, deep: Sequence[torch.Tensor], start: int, first_block: int = 1):
    """``(block, hook)`` pairs that put ``deep[k]`` ``(n, d)`` at positions ``start..`` of block
    ``first_block + k``'s input (MaPLe: ``first_block`` 1, block 0 sees the input prompt)."""
    batch_first = bool(getattr(transformer, "batch_first", True))
    return [(transformer.resblocks[first_block + k], _replace_hook(p, start, batch_first)) for k, p in enumerate(deep)]


@contextlib.contextmanager
def text_prompts(transformer: nn.Module, deep: Sequence[torch.Tensor], first_block: int = 1) -> Iterator[None]:
    """Within the block, text block ``first_block + k`` sees ``deep[k]`` ``(n, d_text)`` at positions ``1..n``.

    ``transformer`` is the CLIP's text ``Transformer``; the layer-0 prompt lives in the input embeddings
    (the prompt learner's context). ``first_block`` 1 (MaPLe, default): the deep prompts enter blocks
    ``1 .. len(deep)``; 0: from block 0 on, overwriting the input prompt before the first block
    (FedTPG's published deep context, ``trainers/fedtpg.py``).
    """
    _check_depth(transformer, deep, "text", first_block)
    with _hooks(deep_prompt_hooks(transformer, deep, start=1, first_block=first_block)):
        yield


@contextlib.contextmanager
def vision_prompts(visual: nn.Module, first: torch.Tensor, deep: Sequence[torch.Tensor]) -> Iterator[None]:
    """Within the block, the ViT ``visual`` runs with ``first`` ``(n, d_vis)`` appended to its input tokens
    and ``deep[k]`` replacing those ``n`` tokens at the input of block ``k+1``.

    ``first`` ``(G, n, d_vis)`` (G prompt sets, shallow only): the embedded batch ``(B, 1 + P, d_vis)`` is
    repeated G times (set-major: sequence ``g * B + b`` is image ``b`` with set ``g``), so one tower pass
    gives ``(G * B, D)`` and the images' patch embedding is computed once."""
    check_token_vit(visual, "vision prompts")
    _check_depth(visual.transformer, deep, "vision")
    if first.dim() == 3 and deep:
        raise ValueError("several vision prompt sets are supported for shallow prompts only")
    n = first.shape[-2]
    if any(p.shape[0] != n for p in deep):
        raise ValueError("every vision prompt must have the same number of tokens")

    def append(_module, args):
        x = args[0]  # (B, 1 + P, d_vis), batch first (open_clip's embedding stage)
        batch = x.shape[0]
        if first.dim() == 3:
            x = x.repeat(first.shape[0], 1, 1)
            prompts = first.to(x.dtype).repeat_interleave(batch, dim=0)  # (G * B, n, d_vis)
        else:
            prompts = first.to(x.dtype).unsqueeze(0).expand(batch, -1, -1)
        return (torch.cat([x, prompts], dim=1), *args[1:])

    with _hooks([(visual.ln_pre, append), *deep_prompt_hooks(visual.transformer, deep, start=-n)]):
        yield
