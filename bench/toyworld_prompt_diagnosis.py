"""Why learned prompts lose to zero-shot on the toy world: cheap prompt-learning experiments on frozen features.

    python bench/toyworld_prompt_diagnosis.py                       # every experiment, shipped weights
    python bench/toyworld_prompt_diagnosis.py --experiments promptfl oracle --weights other.safetensors

Every experiment learns CoOp-style context vectors (16 random N(0, 0.02) vectors, or the embeddings of
"a photo of a") in front of the class names of the demo world (40 classes, base = labels 0-19, novel =
20-39, 16 training shots per base class, world seed 1, 40 test images per class) through the frozen text
tower, against image features encoded once (no augmentation). ``promptfl`` imitates the demo's PromptFL:
the base classes shuffled with ``random.Random(2023)`` and cut into 5 clients of 4 (the pathological
split), 10 rounds of 2 local epochs, batches of 32, SGD 0.05 with momentum 0.9 restarted every round,
logits over the 20 base classes, FedAvg of the context; ``coop`` the same without averaging (local-only
CoOp: each client its own prompt). On the shipped weights they land within ~2.5 points of the real runs
(``python federated_main.py --trainer PromptFL --seed 1``: Base 55.8 / Novel 52.5; CoOp 85.9 / 43.4 /
44.5), at a few seconds each instead of minutes. Each line: Base / Novel % (20-way per half), their HM,
and how often the predicted colour-shape pair is right (the rest of the error is the pattern).
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from datasets.toyworld import PATTERNS, all_classnames, parse_classname  # noqa: E402
from tools.pretrain_toy_clip import (  # noqa: E402
    DEFAULT_WEIGHTS,
    PATTERN_PHRASES,
    build_tiny_clip,
    default_params,
    encode_images,
    encode_texts,
    get_tokenizer,
    linear_probe_accuracy,
    split_images,
)


class Context(torch.nn.Module):
    """Learnable context (n_ctx, D) before "<classname>." through the frozen text tower of ``model``."""

    def __init__(self, model, tok, n_ctx: int = 16, init: str = "", seed: int = 1):
        super().__init__()
        self.model, self.tok = model, tok
        if init:
            n_ctx = len(init.split())
            with torch.no_grad():
                ctx = model.token_embedding(tok([init]))[0, 1:1 + n_ctx].clone()
        else:
            g = torch.Generator().manual_seed(seed)
            ctx = torch.randn(n_ctx, model.token_embedding.weight.shape[1], generator=g) * 0.02
        self.n_ctx = n_ctx
        self.ctx = torch.nn.Parameter(ctx)

    def forward(self, classnames: list[str]) -> torch.Tensor:
        """L2-normalised class text features (C, D)."""
        m = self.model
        toks = self.tok([" ".join(["X"] * self.n_ctx) + " " + c + "." for c in classnames])
        with torch.no_grad():
            emb = m.token_embedding(toks)
        x = torch.cat([emb[:, :1], self.ctx.unsqueeze(0).expand(len(classnames), -1, -1), emb[:, 1 + self.n_ctx:]], 1)
        x = m.ln_final(m.transformer(x + m.positional_embedding, attn_mask=m.attn_mask))
        return F.normalize(x[torch.arange(x.shape[0]), toks.argmax(-1)] @ m.text_projection, dim=-1)


class Lab:
    """The demo world's frozen features and the experiments on them."""

    def __init__(self, weights: Path, test_per_class: int = 40):
        self.model, self.tok = build_tiny_clip(weights), get_tokenizer()
        for q in self.model.parameters():
            q.requires_grad_(False)
        p = default_params()
        names = all_classnames(2)[:40]
        self.base, self.novel = names[:20], names[20:]
        tr, self.ytr, _ = split_images(p, "train", self.base, 16)
        ntr, self.yntr, _ = split_images(p, "train", self.novel, 16)
        tb, self.yb, _ = split_images(p, "test", self.base, test_per_class)
        tn, self.yn, _ = split_images(p, "test", self.novel, test_per_class)
        self.ftr, self.fntr = encode_images(self.model, tr), encode_images(self.model, ntr)
        self.fb, self.fn = encode_images(self.model, tb), encode_images(self.model, tn)
        self.scale = self.model.logit_scale.exp().item()

    # -- evaluation --------------------------------------------------------------------------------
    def score(self, text_b: torch.Tensor, text_n: torch.Tensor) -> dict:
        out = {}
        for half, f, y, names, t in (("base", self.fb, self.yb, self.base, text_b),
                                     ("novel", self.fn, self.yn, self.novel, text_n)):
            pred = (f @ t.t()).argmax(1).numpy()
            pair = np.array([parse_classname(c)[1:] for c in names])
            out[half] = float((pred == y).mean() * 100)
            out[half + "_pair"] = float((pair[pred] == pair[y]).all(1).mean() * 100)
        out["hm"] = 2 * out["base"] * out["novel"] / max(out["base"] + out["novel"], 1e-9)
        return out

    @torch.no_grad()
    def score_prompt(self, ctx: Context) -> dict:
        return self.score(ctx(self.base), ctx(self.novel))

    @torch.no_grad()
    def zero_shot(self, template: str, names=lambda c: c) -> dict:
        enc = encode_texts
        return self.score(enc(self.model, self.tok, [template.format(names(c)) for c in self.base]),
                          enc(self.model, self.tok, [template.format(names(c)) for c in self.novel]))

    def probe(self) -> dict:
        b = linear_probe_accuracy(self.ftr, self.ytr, self.fb, self.yb)
        n = linear_probe_accuracy(self.fntr, self.yntr, self.fn, self.yn)
        return {"base": b, "novel": n, "hm": 2 * b * n / (b + n)}

    # -- training ----------------------------------------------------------------------------------
    def _epochs(self, ctx: Context, items: list[int], epochs: int, rng: random.Random, opt) -> None:
        """``epochs`` passes over ``items`` (indices into the base training set) in batches of 32."""
        y = torch.from_numpy(self.ytr)
        for _ in range(epochs):
            order = list(items)
            rng.shuffle(order)
            for i in range(0, len(order), 32):
                b = order[i:i + 32]
                loss = F.cross_entropy(self.scale * self.ftr[b] @ ctx(self.base).t(), y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()

    def clients(self, users: int) -> list[list[int]]:
        """Training-item indices per client of the pathological split of the 20 base classes."""
        classes = list(range(20))
        random.Random(2023).shuffle(classes)
        cpu = round(20 / users)
        groups = [classes[i * cpu:(i + 1) * cpu] for i in range(users - 1)] + [classes[(users - 1) * cpu:]]
        return [[i for i, c in enumerate(self.ytr) if int(c) in g] for g in groups]

    def promptfl(self, init: str = "", users: int = 5, rounds: int = 10, epochs: int = 2, lr: float = 0.05,
                 seed: int = 1) -> dict:
        """FedAvg of one shared context over the clients (the demo's PromptFL)."""
        rng = random.Random(seed)
        ctx = Context(self.model, self.tok, init=init, seed=seed)
        glob = ctx.ctx.detach().clone()
        for _ in range(rounds):
            new = []
            for items in self.clients(users):
                ctx.ctx.data.copy_(glob)
                self._epochs(ctx, items, epochs, rng, torch.optim.SGD([ctx.ctx], lr=lr, momentum=0.9))
                new.append(ctx.ctx.detach().clone())
            glob = torch.stack(new).mean(0)
        ctx.ctx.data.copy_(glob)
        return self.score_prompt(ctx)

    def coop(self, users: int = 5, rounds: int = 10, epochs: int = 2, lr: float = 0.05, seed: int = 1) -> dict:
        """Local-only CoOp: each client its own context, means over clients; ``local``: on its own classes."""
        rng = random.Random(seed)
        res = []
        for items in self.clients(users):
            ctx = Context(self.model, self.tok, seed=seed)
            for _ in range(rounds):
                self._epochs(ctx, items, epochs, rng, torch.optim.SGD([ctx.ctx], lr=lr, momentum=0.9))
            r = self.score_prompt(ctx)
            with torch.no_grad():
                pred = (self.fb @ ctx(self.base).t()).argmax(1).numpy()
            own = np.isin(self.yb, np.unique(self.ytr[items]))
            r["local"] = float((pred[own] == self.yb[own]).mean() * 100)
            res.append(r)
        out = {k: float(np.mean([r[k] for r in res])) for k in res[0]}
        out["hm"] = 2 * out["base"] * out["novel"] / (out["base"] + out["novel"])
        return out

    def central(self, steps: int = 200, opt: str = "sgd", lr: float = 0.05, init: str = "", seed: int = 1) -> dict:
        """One context trained on all 20 base classes at once (batches of 32) for ``steps`` steps."""
        rng = random.Random(seed)
        ctx = Context(self.model, self.tok, init=init, seed=seed)
        o = (torch.optim.SGD([ctx.ctx], lr=lr, momentum=0.9) if opt == "sgd" else torch.optim.Adam([ctx.ctx], lr=lr))
        per_epoch = (len(self.ytr) + 31) // 32
        for _ in range(steps // per_epoch):
            self._epochs(ctx, list(range(len(self.ytr))), 1, rng, o)
        return self.score_prompt(ctx)

    def oracle(self, steps: int = 400, init: str = "", seed: int = 1) -> dict:
        """One context trained (Adam 2e-3, batches of 64) on the training shots of all 40 classes, novel
        included: the most a shared context can do through this text tower."""
        torch.manual_seed(seed)
        names = self.base + self.novel
        f = torch.cat([self.ftr, self.fntr])
        y = torch.cat([torch.from_numpy(self.ytr), torch.from_numpy(self.yntr) + 20])
        ctx = Context(self.model, self.tok, init=init, seed=seed)
        o = torch.optim.Adam([ctx.ctx], lr=2e-3)
        for _ in range(steps):
            b = torch.randint(len(y), (64,))
            loss = F.cross_entropy(self.scale * f[b] @ ctx(names).t(), y[b])
            o.zero_grad()
            loss.backward()
            o.step()
        return self.score_prompt(ctx)


def phrase_name(classname: str) -> str:
    """"striped red circle" -> "red circle with stripes" (the phrases pretraining captions use most)."""
    pattern, colour, shape = parse_classname(classname)
    return f"{colour} {shape} {PATTERN_PHRASES[pattern][0]}"


def after_name(classname: str) -> str:
    """"striped red circle" -> "red circle, striped" (the wording of ``pretrain_toy_clip.py --adjective-after``)."""
    pattern, colour, shape = parse_classname(classname)
    return f"{colour} {shape}, {pattern}"


EXPERIMENTS = {
    "zero-shot": ("zero-shot 'a photo of a {}.'", lambda lab: lab.zero_shot("a photo of a {}.")),
    "zero-shot-a": ("zero-shot 'a {}.'", lambda lab: lab.zero_shot("a {}.")),
    "zero-shot-closeup": ("zero-shot 'a close-up of a {}.'", lambda lab: lab.zero_shot("a close-up of a {}.")),
    "zero-shot-phrase": ("zero-shot 'a photo of a {}.' with phrase names ('red circle with stripes')",
                         lambda lab: lab.zero_shot("a photo of a {}.", phrase_name)),
    "zero-shot-after": ("zero-shot 'a photo of a {}.' with the adjective after the noun ('red circle, striped')",
                        lambda lab: lab.zero_shot("a photo of a {}.", after_name)),
    "probe": ("16-shot linear probe on the frozen image features", lambda lab: lab.probe()),
    "random-context": ("16 random context vectors, untrained (PromptFL's start)",
                       lambda lab: lab.score_prompt(Context(lab.model, lab.tok, seed=1))),
    "promptfl": ("PromptFL, demo setting (random init, 5 clients x 4 classes, 10 rounds x 2 epochs, SGD 0.05)",
                 lambda lab: lab.promptfl()),
    "promptfl-init": ("PromptFL, context initialised to 'a photo of a'", lambda lab: lab.promptfl(init="a photo of a")),
    "promptfl-30-rounds": ("PromptFL, 30 rounds", lambda lab: lab.promptfl(rounds=30)),
    "promptfl-5-epochs": ("PromptFL, 5 local epochs", lambda lab: lab.promptfl(epochs=5)),
    "promptfl-2-clients": ("PromptFL, 2 clients of 10 classes", lambda lab: lab.promptfl(users=2)),
    "promptfl-lr-0.01": ("PromptFL, SGD 0.01", lambda lab: lab.promptfl(lr=0.01)),
    "coop": ("local-only CoOp, demo setting", lambda lab: lab.coop()),
    "central-sgd": ("one context on all 20 base classes, SGD 0.05, 200 steps", lambda lab: lab.central()),
    "central-adam": ("one context on all 20 base classes, Adam 2e-3, 200 steps",
                     lambda lab: lab.central(opt="adam", lr=2e-3)),
    "oracle": ("one context trained on all 40 classes (novel too), Adam 2e-3, 400 steps", lambda lab: lab.oracle()),
}


def pattern_bias(lab: Lab) -> str:
    """Zero-shot on the base half per true pattern: accuracy, and the share of predictions naming the pattern."""
    t = encode_texts(lab.model, lab.tok, [f"a photo of a {c}." for c in lab.base])
    pred = (lab.fb @ t.t()).argmax(1).numpy()
    pats = np.array([parse_classname(c)[0] for c in lab.base])
    return ", ".join(f"{p}: {100 * (pred[pats[lab.yb] == p] == lab.yb[pats[lab.yb] == p]).mean():.1f} % right, "
                     f"{100 * (pats[pred] == p).mean():.1f} % of predictions" for p in PATTERNS)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    ap.add_argument("--experiments", nargs="*", default=list(EXPERIMENTS), choices=list(EXPERIMENTS), metavar="NAME",
                    help=f"any of: {', '.join(EXPERIMENTS)} (default: all)")
    ap.add_argument("--test-per-class", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lab = Lab(args.weights, args.test_per_class)
    print(f"zero-shot per pattern (base half): {pattern_bias(lab)}")
    print("| experiment | Base % | Novel % | HM | pair right % (base / novel) |\n|---|---|---|---|---|")
    for name in args.experiments:
        title, run = EXPERIMENTS[name]
        t = time.time()
        r = run(lab)
        pair = f"{r['base_pair']:.0f} / {r['novel_pair']:.0f}" if "base_pair" in r else "-"
        local = f" (Local {r['local']:.1f})" if "local" in r else ""
        print(f"| {title}{local} | {r['base']:.1f} | {r['novel']:.1f} | {r['hm']:.1f} | {pair} |"
              f"  ({time.time() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
