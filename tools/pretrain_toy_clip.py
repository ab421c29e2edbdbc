"""Pretrain the ``tiny`` open_clip model on ToyWorld image-caption pairs, and measure it.

    python tools/pretrain_toy_clip.py                      # pretrain (defaults below), save, evaluate
    python tools/pretrain_toy_clip.py --eval-only          # re-measure the shipped weights

The shipped weights are two runs (docs/TOYWORLD.md): stage 1 is the defaults, ``--output
clip/weights/tiny_toyworld_stage1.safetensors``; stage 2 fine-tunes it into the shipped file with ``--init
clip/weights/tiny_toyworld_stage1.safetensors --lr 3e-4 --steps 200 --pool 8000 --adjective-rate 0
--adjective-after 0.5 --sibling-batches --prefix-rate 0.3``.

Pretraining: CLIP's symmetric InfoNCE with a learnable logit scale, AdamW, warmup + cosine decay,
from scratch, on a fixed pool of generated ToyWorld v2 images (``--pool`` of them, re-used with
random flips and small shifts) of the 320 classes "<pattern> <colour> <shape>" of colour-shape pairs
0-79 (pairs 80-99 are never shown, not even as distractors), all five styles, 0-2 plain distractors,
light noise and clutter. Each batch: one style, ``--batch`` distinct classes. Captions are re-sampled
every step from alt-text-like templates (:func:`caption`): partial and noisy, and the class names'
pattern adjectives are rare (``--adjective-rate``) while phrases ("with stripes") are common, so the
image tower learns patterns that the zero-shot class names only weakly express (docs/TOYWORLD.md).
The pool comes from its own random stream (seeded by ``--seed``), separate from the ToyWorld splits.

Evaluation (``evaluate``): zero-shot and 16-shot linear probe per half of the default world and on
pairs unseen in pretraining, zero-shot per style; ``--coop-steps N`` adds a quick CoOp check.
``bench/toyworld_headroom.py`` prints the same as a table.

Deterministic for a given seed, thread count and torch build (one process, no data workers).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

# passive OpenMP waiting: on a shared, oversubscribed CPU spinning threads slow every step down
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from datasets.toyworld import (  # noqa: E402
    _DEFAULTS,
    COLOURS,
    NUM_SEEN_PAIRS,
    PATTERNS,
    SHAPES,
    STYLES,
    ToyWorld,
    all_classnames,
    colour_shape_pairs,
    generate_split,
    parse_classname,
    render_image,
    seen_in_pretraining,
)

MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
DEFAULT_WEIGHTS = REPO / "clip" / "weights" / "tiny_toyworld.safetensors"

STYLE_WORDS = {
    "photo": ["photo", "photo", "picture", "photograph"],
    "sketch": ["sketch", "drawing", "pencil sketch"],
    "painting": ["painting", "painting", "watercolour"],
    "neon": ["neon sign", "neon drawing", "glowing neon picture"],
    "cartoon": ["cartoon", "clipart", "cartoon drawing"],
}
STYLE_PROBS = (0.3, 0.175, 0.175, 0.175, 0.175)
#: Web alt-text clutter that ``--prefix-rate`` puts in front of captions (no colour, shape, pattern or style word).
ALT_TEXT_WORDS = ("image", "stock", "free", "download", "hd", "wallpaper", "new", "best", "cute", "simple", "vector",
                  "icon", "design", "view", "my", "our", "the", "for", "from", "collection", "gallery", "item",
                  "number", "page", "online", "shop", "sale", "high", "quality", "file", "original", "top")

# how pretraining captions describe a surface pattern when they do not use the class-name adjective
PATTERN_PHRASES = {
    "plain": ["in one solid colour", "in a single flat colour"],
    "striped": ["with stripes", "with horizontal stripes", "covered in stripes"],
    "dotted": ["with dots", "with polka dots", "covered in dots"],
    "checkered": ["with checks", "with a tiled pattern", "covered in little checks"],
}


# ----------------------------------------------------------------------------------------------
# model helpers
# ----------------------------------------------------------------------------------------------
def build_tiny_clip(weights: str | Path | None = None) -> torch.nn.Module:
    """The ``tiny`` open_clip CLIP (fp32, eval mode), optionally loaded from a safetensors file."""
    import open_clip

    open_clip.add_model_config(str(REPO / "clip" / "model_configs"))
    model = open_clip.create_model("tiny", pretrained=None)
    if weights is not None:
        from safetensors.torch import load_file

        state = {k: v.float() for k, v in load_file(str(weights)).items()}
        model.load_state_dict(state, strict=True)
    return model.eval()


def get_tokenizer():
    """open_clip's tokenizer for ``tiny`` (context length 32): list[str] -> (N, 32) int64."""
    import open_clip

    open_clip.add_model_config(str(REPO / "clip" / "model_configs"))
    return open_clip.get_tokenizer("tiny")


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, 32, 32, 3) uint8 -> normalised (N, 3, 32, 32) float32 with CLIP's mean/std."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - MEAN) / STD


@torch.no_grad()
def encode_images(model, images: np.ndarray, batch: int = 512) -> torch.Tensor:
    """L2-normalised image features (N, D) of (N, 32, 32, 3) uint8 images."""
    feats = [model.encode_image(to_tensor(images[i:i + batch]), normalize=True) for i in range(0, len(images), batch)]
    return torch.cat(feats)


@torch.no_grad()
def encode_texts(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """L2-normalised text features (N, D)."""
    return model.encode_text(tokenizer(texts), normalize=True)


# ----------------------------------------------------------------------------------------------
# pretraining data
# ----------------------------------------------------------------------------------------------
def pretraining_classes() -> list[str]:
    """The (pattern, colour, shape) classes pretraining shows: the 80 seen pairs x the 4 patterns (320)."""
    return [f"{pattern} {pair}" for pair in colour_shape_pairs()[:NUM_SEEN_PAIRS] for pattern in PATTERNS]


def make_pool(seed: int, n: int, classes: list[str]) -> tuple[np.ndarray, list[dict]]:
    """``n`` pretraining images (n, 32, 32, 3) uint8 and one meta dict each (for captions).

    Image ``i`` shows ``classes[i % C]`` (``C = len(classes)``) in style ``STYLES[(i // C) % 5]``;
    size, position, noise, distractors (plain, from the seen pairs) and clutter are random.
    """
    images = np.empty((n, 32, 32, 3), np.uint8)
    metas = []
    rng = np.random.default_rng([seed, 3, 0])
    pairs = sorted({name.split(" ", 1)[1] for name in classes})
    for i in tqdm(range(n), desc="pool", mininterval=5):
        pattern, colour, shape = parse_classname(classes[i % len(classes)])
        style = STYLES[(i // len(classes)) % len(STYLES)]
        nd = int(rng.choice(3, p=(0.7, 0.25, 0.05)))
        noise = float(rng.uniform(0.0, 0.05))
        img, meta = render_image(colour, shape, style, rng, noise=noise, distractors=nd, distractor_pool=pairs,
                                 clutter=float(rng.uniform(0.0, 0.5)), scale=(0.6, 1.0), pattern=pattern,
                                 return_meta=True)
        images[i] = img
        meta.update(colour=colour, shape=shape, style=style, noise=noise, pattern=pattern)
        metas.append(meta)
    return images, metas


def caption(meta: dict, rng: np.random.Generator, adjective_rate: float, closeup_rate: float = 0.0,
            adjective_correct: float = 1.0, adjective_after: float = 0.0, prefix_rate: float = 0.0) -> str:
    """A random web-alt-text-like caption of one pretraining image from its meta.

    Partial and noisy on purpose: the colour is left out of 10 % of the captions; the surface pattern
    is mentioned in 60 % of a patterned object's captions (25 % of a plain one's), 10 % of those
    mentions name a wrong pattern, and a mention uses the class-name adjective ("striped", "dotted",
    "checkered", "plain") only with probability ``adjective_rate``, otherwise a phrase ("with stripes",
    "with polka dots", "with checks", "in one solid colour", ...). So the image tower learns the
    patterns from the phrases, while the text tower sees the class names' pattern words rarely.

    Variants measured in docs/TOYWORLD.md (not the shipped recipe; the defaults leave the random stream
    and the captions unchanged): ``closeup_rate`` > 0 makes that share of captions "a close-up of a
    <pattern> <colour> <shape>." with the right adjective 95 % of the time; ``adjective_correct`` < 1 makes
    a class-name adjective in the other captions a random pattern with probability 1 - ``adjective_correct``;
    ``adjective_after`` > 0 replaces that share of the phrases by the class-name adjective *after* the noun
    ("a red circle, striped", "a red circle that is striped"): the adjective is common, but never where the
    class names put it; ``prefix_rate`` > 0 puts 1-16 words of alt-text clutter (:data:`ALT_TEXT_WORDS`) in
    front of that share of the captions, so the object's words also occur late in the text, as behind a
    learned context of 16 vectors.
    """
    c, s = meta["colour"], meta["shape"]
    if closeup_rate > 0 and rng.random() < closeup_rate:
        pattern = meta["pattern"] if rng.random() < 0.95 else PATTERNS[int(rng.integers(len(PATTERNS)))]
        return f"a close-up of a {pattern} {c} {s}."
    sw = STYLE_WORDS[meta["style"]][int(rng.integers(len(STYLE_WORDS[meta["style"]])))]
    size = meta["size"]
    pattern = meta["pattern"]
    adjective, phrase = "", ""
    if rng.random() < (0.6 if pattern != "plain" else 0.25):
        if rng.random() < 0.1:
            pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
        if rng.random() < adjective_rate:
            if adjective_correct < 1.0 and rng.random() >= adjective_correct:
                pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
            adjective = pattern + " "
        elif adjective_after > 0 and rng.random() < adjective_after:
            phrase = (", " if rng.random() < 0.5 else " that is ") + pattern
        else:
            options = PATTERN_PHRASES[pattern]
            phrase = " " + options[int(rng.integers(len(options)))]
    colour = "" if rng.random() < 0.1 else c + " "
    obj = f"{adjective}{colour}{s}"
    if size and rng.random() < 0.5:
        obj = f"{size} {obj}"
    r = rng.random()
    if r < 0.35:
        text = f"a {sw} of a {obj}{phrase}."
    elif r < 0.50:
        text = f"a {obj}{phrase}."
    elif r < 0.60:
        text = f"a {c} {s}{phrase} in a {sw}." if colour else f"a {s}{phrase} in a {sw}."
    elif r < 0.68:
        text = f"there is a {obj}{phrase} in the {sw}."
    elif r < 0.76 and meta["noise"] > 0.04:
        text = f"a {obj}{phrase} on a noisy background."
    elif r < 0.84:
        text = f"{obj}{phrase}"
    else:
        text = f"a {sw} showing a {obj}{phrase}."
    if meta["distractors"] and rng.random() < 0.5:
        others = " and a small ".join(meta["distractors"])
        text = text.rstrip(".") + f" next to a small {others}."
    if prefix_rate > 0 and rng.random() < prefix_rate:
        words = rng.choice(len(ALT_TEXT_WORDS), int(rng.integers(1, 17)))
        text = " ".join(ALT_TEXT_WORDS[int(w)] for w in words) + " " + text
    return text


class CompactTokenEmbedding(torch.nn.Module):
    """Training-time stand-in for the text tower's token table: only the rows of ``ids`` are parameters.

    Captions use a few hundred of the tokenizer's 49,408 tokens; a dense Adam step over the whole
    table cost more than the rest of a step. Rows never used get no gradient in either form, so
    training is the same; :meth:`full_weight` writes the rows back into the table (V, D).
    """

    def __init__(self, table: torch.nn.Embedding, ids: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table.weight.detach().clone())
        remap = torch.full((table.weight.shape[0],), -1, dtype=torch.long)
        remap[ids] = torch.arange(len(ids))
        self.register_buffer("remap", remap)
        self.register_buffer("ids", ids.clone())
        self.rows = torch.nn.Parameter(table.weight.detach()[ids].clone())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, L, D) embeddings; every id must be one of ``ids``."""
        idx = self.remap[tokens]
        if bool((idx < 0).any()):
            raise ValueError("a caption used a token outside the pretraining vocabulary")
        return self.rows[idx]

    def full_weight(self) -> torch.Tensor:
        w = self.table.clone()
        w[self.ids] = self.rows.detach()
        return w


def caption_token_ids(tokenizer, metas: list[dict], seed: int, extra_words: tuple[str, ...] = ()) -> torch.Tensor:
    """Sorted unique token ids that :func:`caption` can produce for ``metas`` (every word of its vocabulary, and
    ``extra_words``, the words of caption variants).

    The words go in as one text, which the tokenizer truncates to 32 tokens; the words it cuts off come from the
    4,000 sampled default captions, and ``extra_words`` from their own text and one text per word too (a variant's
    words never occur in the sampled captions; keeping them in the first text as well leaves the close-up variant's
    ids as before)."""
    words = set(extra_words) | set(COLOURS + SHAPES + PATTERNS + (
        "small", "large", "next", "to", "and", "object", "noisy", "background", "there", "is", "in", "the", "a", "of",
        "showing"))
    for options in list(STYLE_WORDS.values()) + list(PATTERN_PHRASES.values()):
        for text in options:
            words.update(text.split())
    rng = np.random.default_rng([seed, 11])
    texts = [" ".join(sorted(words))] + [caption(metas[i], rng, 0.5) for i in range(min(len(metas), 4000))]
    texts += [" ".join(extra_words), *extra_words] if extra_words else []
    toks = tokenizer(texts)
    return torch.unique(toks)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and shifts of up to 2 px (reflect-padded) of a (B, 3, 32, 32) batch."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    pad = F.pad(x, (2, 2, 2, 2), mode="reflect")
    dx, dy = (int(v) for v in torch.randint(0, 5, (2,), generator=gen))
    return pad[:, :, dy:dy + 32, dx:dx + 32]


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------
def pretrain(steps: int, batch: int, seed: int, pool: int, lr: float, out: Path, adjective_rate: float,
             closeup_rate: float = 0.0, adjective_correct: float = 1.0, sibling_batches: bool = False,
             init: Path | None = None, adjective_after: float = 0.0, prefix_rate: float = 0.0) -> None:
    """Train from scratch (or from the weights ``init``), save fp16 safetensors (keys = ``model.state_dict()`` keys)
    at ``out``. ``closeup_rate``, ``adjective_correct``, ``adjective_after``: :func:`caption`'s variants;
    ``sibling_batches``: each batch is ``batch // 4`` colour-shape pairs with all four patterns (pattern siblings
    as hard negatives) instead of ``batch`` random classes."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    np.random.seed(seed)
    seen = pretraining_classes()
    t0 = time.time()
    images, metas = make_pool(seed, pool, seen)
    print(f"pool of {pool} images in {time.time() - t0:.0f}s")
    model = build_tiny_clip(init).train()
    tokenizer = get_tokenizer()
    full_table = model.token_embedding
    extra = (("close-up",) if closeup_rate > 0 else ()) + ((",", "that") if adjective_after > 0 else ()) + (
        ALT_TEXT_WORDS if prefix_rate > 0 else ())
    model.token_embedding = CompactTokenEmbedding(full_table, caption_token_ids(tokenizer, metas, seed, extra))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-6)
    warm = max(1, steps // 15)

    def lr_factor(i: int) -> float:
        if i < warm:
            return (i + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (i - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    rng = np.random.default_rng([seed, 7])
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(batch)
    n_combos = len(seen)
    t1 = time.time()
    bar = tqdm(range(steps), desc="pretrain", mininterval=10)
    for step in bar:
        # one style per batch and one image per class (a random subset of the 320 classes): neither
        # the style word nor the colour alone can tell the captions of a batch apart, so the towers
        # must learn shapes (same-colour hard negatives) and, where captions say so, patterns
        style = int(rng.choice(len(STYLES), p=STYLE_PROBS))
        if sibling_batches:
            pairs = rng.choice(n_combos // len(PATTERNS), batch // len(PATTERNS), replace=False)
            combos = (pairs[:, None] * len(PATTERNS) + np.arange(len(PATTERNS))).ravel()
        else:
            combos = rng.choice(n_combos, batch, replace=batch > n_combos)
        idx = combos + n_combos * (style + len(STYLES) * rng.integers(0, pool // (n_combos * len(STYLES)), batch))
        x = augment(to_tensor(images[idx]), gen)
        toks = tokenizer([caption(metas[i], rng, adjective_rate, closeup_rate, adjective_correct, adjective_after,
                                  prefix_rate) for i in idx])
        img_f = model.encode_image(x, normalize=True)
        txt_f = model.encode_text(toks, normalize=True)
        logits = model.logit_scale.exp() * img_f @ txt_f.t()
        loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
    print(f"pretraining: {steps} steps in {time.time() - t1:.0f}s (total {time.time() - t0:.0f}s)")
    full_table.weight.data.copy_(model.token_embedding.full_weight())
    model.token_embedding = full_table
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    meta = {"arch": "tiny", "seed": str(seed), "steps": str(steps), "batch": str(batch), "pool": str(pool),
            "lr": str(lr), "adjective_rate": str(adjective_rate), "world": "ToyWorld v2"}
    meta.update(variant_metadata(closeup_rate=closeup_rate, adjective_correct=adjective_correct,
                                 sibling_batches=sibling_batches, init=init, adjective_after=adjective_after,
                                 prefix_rate=prefix_rate))
    save_file(state, str(out), metadata=meta)
    sort_safetensors_metadata(out)
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB)")


#: the caption and batch variants of :func:`pretrain` and their defaults
VARIANT_DEFAULTS = {"closeup_rate": 0.0, "adjective_correct": 1.0, "sibling_batches": False, "init": None,
                    "adjective_after": 0.0, "prefix_rate": 0.0}


def variant_metadata(**settings) -> dict[str, str]:
    """The weights file's metadata entries of the variant ``settings`` (names of :data:`VARIANT_DEFAULTS`) that
    differ from their defaults, as strings; the defaults add none, so a default run's file is unchanged.

    Each setting is compared with its own default (``True == 1.0`` in Python: a shared list of default values
    once dropped ``sibling_batches`` from the metadata)."""
    return {k: str(v) for k, v in settings.items() if v != VARIANT_DEFAULTS[k]}


def sort_safetensors_metadata(path: Path) -> None:
    """Rewrite a safetensors file's ``__metadata__`` with its keys sorted, in place, so that reruns are bit-identical.

    safetensors writes the metadata from an unordered map: two identical runs give identical tensors but
    may list the metadata keys in another order. The header (8-byte length + compact JSON, space-padded)
    keeps its length; only the order of the metadata keys changes.
    """
    import json
    import struct

    with open(path, "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
        text = json.dumps(header, separators=(",", ":")).encode()
        if len(text) > n:
            raise RuntimeError(f"{path}: re-serialised safetensors header is longer than the original")
        f.seek(8)
        f.write(text + b" " * (n - len(text)))


# ----------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------
def default_params(**overrides) -> dict:
    """The default ToyWorld generation parameters (``extend_cfg`` defaults), with overrides."""
    p = dict(_DEFAULTS)
    p.update(overrides)
    return p


def split_images(p: dict, split: str, classnames: list[str], per_class: int, styles=None):
    """(images (N,32,32,3) uint8, labels (N,), domains (N,)) of a ToyWorld split under params ``p``."""
    return generate_split(int(p["SEED"]), split, classnames, per_class, styles or p["STYLES"], noise=p["NOISE"],
                          distractors=p["DISTRACTORS"], clutter=p["CLUTTER"], scale=tuple(p["SCALE"]))


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, images: np.ndarray, labels: np.ndarray, classnames: list[str],
                       template: str = ToyWorld.TEMPLATE) -> float:
    """Zero-shot top-1 accuracy in % of (N,32,32,3) uint8 images among ``classnames``."""
    txt = encode_texts(model, tokenizer, [template.format(c) for c in classnames])
    pred = (encode_images(model, images) @ txt.t()).argmax(1).numpy()
    return float((pred == labels).mean() * 100)


class PromptText(torch.nn.Module):
    """CoOp-style text side: ``n_ctx`` learnable vectors + class-name tokens through the frozen text tower."""

    def __init__(self, model, tokenizer, n_ctx: int = 16, seed: int = 0):
        super().__init__()
        self.model, self.tokenizer, self.n_ctx = model, tokenizer, n_ctx
        g = torch.Generator().manual_seed(seed)
        self.ctx = torch.nn.Parameter(torch.randn(n_ctx, model.token_embedding.weight.shape[1], generator=g) * 0.02)

    def forward(self, classnames: list[str]) -> torch.Tensor:
        """L2-normalised class text features (C, D)."""
        m = self.model
        toks = self.tokenizer([" ".join(["X"] * self.n_ctx) + " " + c + "." for c in classnames])
        with torch.no_grad():
            emb = m.token_embedding(toks)
        x = torch.cat([emb[:, :1], self.ctx.unsqueeze(0).expand(len(classnames), -1, -1), emb[:, 1 + self.n_ctx:]], 1)
        x = x + m.positional_embedding
        x = m.transformer(x, attn_mask=m.attn_mask)
        x = m.ln_final(x)
        x = x[torch.arange(x.shape[0]), toks.argmax(-1)] @ m.text_projection
        return F.normalize(x, dim=-1)


def coop_check(model, tokenizer, train, test_base, test_novel, base: list[str], novel: list[str], steps: int = 200,
               lr: float = 2e-3, seed: int = 0) -> tuple[float, float]:
    """Learn 16 context vectors on ``train`` = (images, labels) of the base classes; return (base %, novel %)."""
    for p in model.parameters():
        p.requires_grad_(False)
    feats = encode_images(model, train[0])
    labels = torch.from_numpy(train[1])
    prompt = PromptText(model, tokenizer, seed=seed)
    opt = torch.optim.AdamW([prompt.ctx], lr=lr, weight_decay=0.0)
    scale = model.logit_scale.exp().item()
    for _ in range(steps):
        loss = F.cross_entropy(scale * feats @ prompt(base).t(), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        accs = []
        for (imgs, labs), names in ((test_base, base), (test_novel, novel)):
            pred = (encode_images(model, imgs) @ prompt(names).t()).argmax(1).numpy()
            accs.append(float((pred == labs).mean() * 100))
    return accs[0], accs[1]


def linear_probe_accuracy(train_feats: torch.Tensor, train_labels: np.ndarray, test_feats: torch.Tensor,
                          test_labels: np.ndarray, weight_decay: float = 1e-3, iters: int = 200) -> float:
    """Top-1 % of a multinomial logistic regression (full-batch L-BFGS, L2 penalty ``weight_decay``) trained
    on L2-normalised frozen features ``train_feats`` (N, D) and tested on ``test_feats`` (M, D)."""
    x, xt = F.normalize(train_feats.float(), dim=-1), F.normalize(test_feats.float(), dim=-1)
    y = torch.from_numpy(np.asarray(train_labels)).long()
    n_cls = int(max(y.max().item(), int(np.max(test_labels))) + 1)
    w = torch.zeros(x.shape[1], n_cls, requires_grad=True)
    b = torch.zeros(n_cls, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = (xt @ w + b).argmax(1).numpy()
    return float((pred == np.asarray(test_labels)).mean() * 100)


def headroom(model, tokenizer, p: dict, classnames: list[str], shots: int = 16, test_per_class: int | None = None,
             seed: int | None = None) -> dict:
    """Zero-shot and ``shots``-shot linear-probe accuracy (%) of one class set of the world ``p``.

    Train images: the first ``shots`` of the world's train split per class; test: its test split
    (``test_per_class`` images per class, default ``p["TEST_PER_CLASS"]``); world seed ``seed`` (default
    ``p["SEED"]``). Returns {"zero_shot", "linear_probe"}.
    """
    q = dict(p, SEED=p["SEED"] if seed is None else seed)
    tr_img, tr_lab, _ = split_images(q, "train", classnames, shots)
    te_img, te_lab, _ = split_images(q, "test", classnames, int(test_per_class or p["TEST_PER_CLASS"]))
    zs = zero_shot_accuracy(model, tokenizer, te_img, te_lab, classnames)
    lp = linear_probe_accuracy(encode_images(model, tr_img), tr_lab, encode_images(model, te_img), te_lab)
    return {"zero_shot": zs, "linear_probe": lp}


def evaluate(weights: Path, shots: int = 16, coop_steps: int = 0, **overrides) -> dict:
    """Zero-shot and linear probe per half of the default world, zero-shot on held-out pairs and per
    style, and (``coop_steps`` > 0) the quick CoOp check; returns the numbers (%)."""
    model = build_tiny_clip(weights)
    tok = get_tokenizer()
    p = default_params(**overrides)
    names = all_classnames(int(p["VERSION"]))
    n = int(p["NUM_CLASSES"])
    base, novel = names[:n // 2], names[n // 2:n]
    held = [c for c in names if not seen_in_pretraining(c)][:n // 2]
    per = int(p["TEST_PER_CLASS"])
    res = {}
    for half, classes in (("base", base), ("novel", novel), ("heldout", held)):
        h = headroom(model, tok, p, classes, shots)
        res[f"zs_{half}"], res[f"lp_{half}"] = h["zero_shot"], h["linear_probe"]
    for style in STYLES:
        img, lab, _ = split_images(p, "test", names[:n], 10, styles=[style])
        res[f"zs40_{style}"] = zero_shot_accuracy(model, tok, img, lab, names[:n])
    if coop_steps > 0:
        tb = split_images(p, "test", base, per)[:2]
        tn = split_images(p, "test", novel, per)[:2]
        tr = split_images(p, "train", base, shots)[:2]
        res["coop_base"], res["coop_novel"] = coop_check(model, tok, tr, tb, tn, base, novel, steps=coop_steps)
    return res


def parse_overrides(items: list[str]) -> dict:
    """``KEY=VALUE`` pairs with Python literal values (numbers, strings, tuples, lists; never code)."""
    import ast

    out = {}
    for kv in items:
        k, sep, v = kv.partition("=")
        try:
            if not sep:
                raise ValueError
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            raise SystemExit(f"--set {k}: {v!r} is not a literal (a number, 'string', tuple or list)") from None
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=128, help="distinct classes per batch (at most 320)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool", type=int, default=24000, help="number of generated pretraining images")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1, help="1 is also the fastest on a shared 2-core CPU")
    ap.add_argument("--output", type=Path, default=DEFAULT_WEIGHTS)
    ap.add_argument("--eval-only", action="store_true", help="only measure the weights at --output")
    ap.add_argument("--coop-steps", type=int, default=0)
    ap.add_argument("--adjective-rate", type=float, default=0.03,
                    help="how often a caption that mentions the pattern uses the class-name adjective")
    ap.add_argument("--closeup-rate", type=float, default=0.0,
                    help="variant: share of 'a close-up of a <pattern> <colour> <shape>.' captions (docs/TOYWORLD.md)")
    ap.add_argument("--adjective-correct", type=float, default=1.0,
                    help="variant: how often a class-name adjective outside the close-up captions is the right one")
    ap.add_argument("--adjective-after", type=float, default=0.0,
                    help="variant: share of pattern phrases replaced by the class-name adjective after the noun")
    ap.add_argument("--prefix-rate", type=float, default=0.0,
                    help="variant: share of captions with 1-16 words of alt-text clutter in front (docs/TOYWORLD.md)")
    ap.add_argument("--sibling-batches", action="store_true",
                    help="variant: batches of colour-shape pairs with all four patterns")
    ap.add_argument("--init", type=Path, default=None, help="start from these weights instead of from scratch")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override ToyWorld defaults for the evaluation, e.g. NOISE=0.1 DISTRACTORS=2")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.eval_only:
        pretrain(args.steps, args.batch, args.seed, args.pool, args.lr, args.output, args.adjective_rate,
                 args.closeup_rate, args.adjective_correct, args.sibling_batches, args.init, args.adjective_after,
                 args.prefix_rate)
    overrides = parse_overrides(args.set)
    t = time.time()
    res = evaluate(args.output, coop_steps=args.coop_steps, **overrides)
    print(" ".join(f"{k}={v:.1f}" for k, v in res.items()), f"({time.time() - t:.0f}s)")

if __name__ == "__main__":
    main()
