"""Synchronous FedSGD with differential privacy: the round protocol of methods declaring
``ROUND_PROTOCOL = "fedsgd"`` (DP-FPL, ``trainers/dpfpl.py``).

A round is ``S`` synchronised steps, ``S = ceil(max_i n_i / B)`` (one expected pass over the largest
client's data; ``B`` = ``DATALOADER.TRAIN_X.BATCH_SIZE``). At each step:

1. every client of the round draws a batch of its training features (``SAMPLING "poisson"``: each
   example with probability ``q_i = min(1, B / n_i)``; ``"shuffle"``: the next ``B`` of a shuffled pass,
   starting over when exhausted) and computes, from its own state, the gradient of the shared global
   prompt (clipped per example) and its local gradient (with local noise): ``client_gradients``;
2. the server averages the global gradients (unweighted, over the round's ``N`` clients) and adds
   ``N(0, (sigma C / (B N))^2)`` (central noise);
3. every client applies the noisy average and its own local gradient in one step of its own optimiser
   (``OPTIM``; created per client at the start of the round, kept for the round's steps).

Every client ends the round with the same global prompt (the same noisy gradients from the same start),
which is what it uploads; the server's aggregation of identical uploads returns it.

The noise multiplier ``sigma`` and the epsilon spent (``privacy_report``) are computed from the plan
(:class:`PrivacyPlan`): rounds x ``S`` noisy steps at the largest sampling rate of any client.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dassl.optim import build_optimizer
from trainers.privacy import (
    combined_multiplier,
    epsilon_of_history,
    gaussian_noise_like,
    noise_multiplier_for,
    published_noise_multiplier,
)


@dataclass(frozen=True)
class PrivacyPlan:
    """The run's DP parameters: ``sample_rate`` (largest ``B / n_i``), ``steps_per_round``, ``rounds``,
    ``noise_multiplier`` (0: no privacy), ``delta``, ``accountant`` and whether the epsilon is a guarantee
    (``accounted``: False for the published ``NOISE_AS_EPSILON`` calibration)."""

    sample_rate: float
    steps_per_round: int
    rounds: int
    noise_multiplier: float
    delta: float
    accountant: str
    clip_norm: float
    target_epsilon: float
    accounted: bool

    @classmethod
    def for_run(cls, tcfg, sizes: list[int], batch_size: int, rounds: int) -> PrivacyPlan:
        """The plan of a run: ``tcfg`` the trainer's node, ``sizes`` the clients' training-set sizes."""
        sizes = [n for n in sizes if n > 0]
        steps = max(1, math.ceil(max(sizes) / batch_size)) if sizes else 1
        rate = min(1.0, batch_size / min(sizes)) if sizes else 1.0
        eps, delta = float(tcfg.EPSILON), float(tcfg.DELTA)
        accounted = True
        if float(tcfg.NOISE_MULTIPLIER) > 0:
            sigma = float(tcfg.NOISE_MULTIPLIER)
        elif eps <= 0:
            sigma = 0.0
        elif tcfg.NOISE_AS_EPSILON:
            sigma, accounted = published_noise_multiplier(eps, rounds, delta), False
        else:
            sigma = noise_multiplier_for(eps, rate, rounds * steps, delta, str(tcfg.ACCOUNTANT))
        return cls(sample_rate=rate, steps_per_round=steps, rounds=rounds, noise_multiplier=sigma, delta=delta,
                   accountant=str(tcfg.ACCOUNTANT), clip_norm=float(tcfg.CLIP_NORM), target_epsilon=eps,
                   accounted=accounted)

    def report(self, rounds_done: int, previous: dict | None = None) -> dict:
        """The privacy record after ``rounds_done`` rounds (``results.json`` ``privacy``): epsilon of the
        global prompt's mechanism, of the low-rank factors' and of the personalised model (both), at
        ``delta``; ``null`` and ``guarantee False`` when there is no accounted guarantee.

        ``previous``: the record of the rounds before (a resumed run: its checkpoint's record). Its
        ``segments`` ``[noise multiplier, sample rate, steps]`` are kept and this plan's steps appended, so a
        run resumed with another noise multiplier (more rounds recalibrate ``EPSILON``) composes both."""
        previous = previous or {}
        segments = [list(seg) for seg in previous.get("segments", [])]
        new_steps = rounds_done * self.steps_per_round - sum(seg[2] for seg in segments)
        sigma, rate = self.noise_multiplier, self.sample_rate
        if new_steps > 0:
            if segments and segments[-1][:2] == [sigma, rate]:
                segments[-1][2] += new_steps
            else:
                segments.append([sigma, rate, new_steps])
        private = sigma > 0
        guarantee = private and self.accounted and all(seg[0] > 0 for seg in segments) and \
            previous.get("guarantee", True) is not False

        def eps(combine: bool) -> float | None:
            if not guarantee:
                return None
            history = [(combined_multiplier(m, m) if combine else m, q, n) for m, q, n in segments]
            return epsilon_of_history(history, self.delta, self.accountant)

        return {"private": private, "unit": "example", "accountant": self.accountant if self.accounted else None,
                "noise_multiplier": sigma, "clip_norm": self.clip_norm, "sample_rate": rate,
                "steps": sum(seg[2] for seg in segments), "steps_per_round": self.steps_per_round,
                "delta": self.delta, "target_epsilon": self.target_epsilon or None, "segments": segments,
                "epsilon_global": eps(False), "epsilon_local": eps(False),
                "epsilon_personalised_model": eps(True), "guarantee": bool(guarantee)}


def noisy_average(grads: list[torch.Tensor], sigma: float, clip_norm: float, batch_size: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """The server's step: the unweighted mean of the ``N`` clients' gradients plus ``N(0, s^2)`` noise,
    ``s = sigma * clip_norm / (batch_size * N)`` (central DP; no noise when ``sigma`` is 0)."""
    average = torch.stack(grads).mean(0)
    if sigma <= 0:
        return average
    return average + gaussian_noise_like(average, sigma * clip_norm / (batch_size * len(grads)), generator)


class FedSGDProtocol:
    """The synchronous DP FedSGD round of ``runtime`` (a ``ClientRuntime`` serving every client; module
    docstring); ``derive_seed`` (``(*ints) -> int``) seeds each round's and client's draws as the runtime
    seeds its own."""

    def __init__(self, runtime, derive_seed: Callable[..., int]):
        self.runtime = runtime
        self.derive_seed = derive_seed
        self.trainer = runtime.trainer
        cfg = runtime.cfg
        self.batch_size = int(cfg.DATALOADER.TRAIN_X.BATCH_SIZE)
        self.plan = PrivacyPlan.for_run(self.trainer.tcfg, [len(items) for items in runtime.data.train],
                                        self.batch_size, int(cfg.OPTIM.ROUND))

    def report(self, rounds_done: int, previous: dict | None = None) -> dict:
        """``PrivacyPlan.report`` of this run's plan."""
        return self.plan.report(rounds_done, previous)

    def _client_data(self, cid: int, round_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Client ``cid``'s training features ``(n, D)`` and labels ``(n,)`` of this round (one view each)."""
        t = self.trainer
        feats, labels = [], []
        for batch in self.runtime.train_loader(cid, round_idx):
            if "feat" in batch:
                feats.append(batch["feat"].to(t.device))
                labels.append(batch["label"].to(t.device))
            else:
                images, y = t.parse_batch_train(batch)
                feats.append(t.encode_images(images))
                labels.append(y)
        return torch.cat(feats).float(), torch.cat(labels)

    def _batches(self, n: int, generator: torch.Generator) -> list[torch.Tensor]:
        """The ``S`` index batches of a client with ``n`` examples (``SAMPLING``)."""
        steps, b = self.plan.steps_per_round, self.batch_size
        if str(self.trainer.tcfg.SAMPLING) == "poisson":
            rate = min(1.0, b / n)
            return [torch.nonzero(torch.rand(n, generator=generator) < rate).flatten() for _ in range(steps)]
        order = torch.cat([torch.randperm(n, generator=generator) for _ in range(math.ceil(steps * b / n) + 1)])
        return [order[s * b:(s + 1) * b] for s in range(steps)]

    def train_round(self, round_idx: int, starts: dict[int, dict]) -> list[tuple[int, dict, dict]]:
        """Train the round's clients (``starts``: client id -> its shared + personal tensors) by synchronous
        FedSGD; returns ``(client id, summary, trained state)`` per client, in ``starts``' order."""
        t, seed, derive_seed = self.trainer, self.runtime.seed, self.derive_seed
        keys = t.shared_keys() + t.personal_keys()
        cids = list(starts)
        states = {cid: dict(starts[cid]) for cid in cids}
        gens = {cid: torch.Generator().manual_seed(derive_seed(seed, round_idx, cid, 3)) for cid in cids}
        server_gen = torch.Generator().manual_seed(derive_seed(seed, round_idx, 4))
        data = {cid: self._client_data(cid, round_idx) for cid in cids}
        batches = {cid: self._batches(len(data[cid][1]), gens[cid]) for cid in cids}
        params = [p for p in t.model.parameters() if p.requires_grad]
        optims = {cid: build_optimizer(params, t.cfg.OPTIM) for cid in cids}
        sigma = self.plan.noise_multiplier
        logs = {cid: {"loss": [], "acc": []} for cid in cids}
        t.set_model_mode("train")
        for step in range(self.plan.steps_per_round):
            sent, local = {}, {}
            for cid in cids:
                t.load_state(states[cid])
                x, y = data[cid]
                idx = batches[cid][step].to(y.device)
                sent[cid], local[cid], summary = t.client_gradients(x[idx], y[idx], self.batch_size, sigma, gens[cid])
                for k in ("loss", "acc"):
                    if not math.isnan(summary[k]):
                        logs[cid][k].append(summary[k])
            average = noisy_average([sent[c] for c in cids], sigma, self.plan.clip_norm, self.batch_size,
                                    server_gen)
            for cid in cids:
                t.load_state(states[cid])
                t.apply_gradients(average, local[cid], optims[cid])
                states[cid] = t.get_state(keys)
        out = []
        for cid in cids:
            summary = {k: (sum(v) / len(v) if v else float("nan")) for k, v in logs[cid].items()}
            out.append((cid, summary, states[cid]))
        return out
