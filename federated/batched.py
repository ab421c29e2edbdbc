"""Clients of a round trained together (``FED.BATCH_CLIENTS``): stacked parameters, one text pass.

The clients of a round start from their downloaded states and never interact until aggregation, so
``K`` clients can be trained as ONE optimisation problem on one device:

* every trainable tensor ``(...)`` of the trainer becomes a stacked tensor ``(K, ...)``; client ``k``
  sees row ``k`` (:class:`ParameterRows` substitutes the rows for the parameters of the trainer's own
  model, so every method's own ``compute_loss`` -- adapters, contrastive / orthogonality / proximal terms --
  is used unchanged);
* the text tower, where the time goes, runs ONCE per step over all active clients' prompts
  (``sum_k N_k`` prompts, e.g. ``K * C`` for PromptFL, ``K * 2C`` for FedPGP / FedTV);
* the loss is ``sum_k L_k``: row ``k`` of every stacked tensor only influences ``L_k``, so the gradient
  of the sum with respect to row ``k`` is exactly client ``k``'s gradient;
* the optimiser (:class:`MaskedOptimizer`: SGD with momentum / dampening / Nesterov / weight decay,
  Adam, AdamW, AMSGrad) is elementwise, with per-client momentum initialisation and per-client Adam
  step counts, and it only updates the rows of clients that had a batch in this step (clients have
  different numbers of batches per epoch). An epoch is ``max_k n_k`` steps; client ``k`` takes part in
  the first ``n_k``. The learning rate follows the per-epoch schedule of ``OPTIM``, as a fresh
  per-client scheduler would.

Hence batched and sequential training give the same tensors up to floating-point summation order
(``tests/test_speed_batched.py``).

How the single text pass is obtained without changing any trainer: during a step the model's
``text_encoder`` is replaced by a proxy. Pass 1 runs each active client's ``compute_loss`` until its
first text-encoder call, records its inputs (dense prompt embeddings ``(N_k, L, d)`` and token ids, or
the ``G_k`` shared prefixes of ``encode_shared_prefix``; with their autograd graph back to the client's
rows) and stops there; the real text tower then encodes the concatenation of every client's prompts
once (:func:`encode_together`); pass 2 runs each ``compute_loss`` again with the proxy
returning the client's slice of the features. A ``compute_loss`` that never calls the text tower is
used directly from pass 1.

Requirements (:func:`batching_support` names the one that fails; the server then trains the clients
one after another): frozen, cached image features (``FED.FEATURE_CACHE``), a frozen text tower called
at most once per step (``text_encoder(prompts, tokenized)`` or ``text_encoder.encode_shared_prefix``),
the base class' training step and local loop, no fp16 gradient scaling, and an elementwise optimiser
(``sgd``, ``adam``, ``adamw``, ``amsgrad``).

Deviation from sequential training: a non-finite loss is detected at the end of the epoch (one
host sync per epoch instead of one per step); the round is aborted either way.
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from dassl.engine import NonFiniteLossError
from dassl.optim import build_lr_scheduler, build_optimizer
from trainers.base import FederatedTrainer

MASKED_OPTIMIZERS = ("sgd", "adam", "adamw", "amsgrad")


class BatchingUnsupported(RuntimeError):
    """The trainer cannot be trained with stacked clients (the message says why)."""


def batching_support(trainer: FederatedTrainer) -> str | None:
    """``None`` when ``trainer``'s clients can be trained together, else the reason why not."""
    cls = type(trainer)
    if not trainer.image_features_cacheable:
        return f"{cls.__name__}'s image path is trainable or prompted (its image features are not cacheable)"
    for name in ("forward_backward", "local_train", "build_optimizers", "run_epoch"):
        if getattr(cls, name) is not getattr(FederatedTrainer, name):
            return f"{cls.__name__} overrides {name}"
    encoder = getattr(trainer.model, "text_encoder", None)
    if not isinstance(encoder, nn.Module):
        return f"{cls.__name__}'s model has no text_encoder module"
    if any(p.requires_grad for p in encoder.parameters()):
        return f"{cls.__name__} trains its text tower (each client has its own text encoder)"
    if trainer.device.type == "cuda" and trainer.precision in ("fp16", "amp"):
        return "PREC fp16 uses gradient scaling (use bf16 or fp32)"
    name = str(trainer.cfg.OPTIM.NAME).lower()
    if name not in MASKED_OPTIMIZERS:
        return f"OPTIM.NAME {name} has no masked elementwise version (supported: {', '.join(MASKED_OPTIMIZERS)})"
    if bool(trainer.cfg.OPTIM.STAGED_LR):
        return "OPTIM.STAGED_LR (per-group learning rates) is not supported"
    if not trainer.trainable_parameters():
        return f"{cls.__name__} has nothing to train"
    return None


def epoch_learning_rates(optim_cfg, epochs: int) -> list[float]:
    """The learning rate of each local epoch, as a fresh optimiser + scheduler of ``optim_cfg`` gives."""
    cfg = optim_cfg.clone()
    cfg.defrost()
    cfg.MAX_EPOCH = epochs
    optim = build_optimizer([nn.Parameter(torch.zeros(1))], cfg)
    sched = build_lr_scheduler(optim, cfg)
    lrs = []
    for _ in range(epochs):
        lrs.append(float(optim.param_groups[0]["lr"]))
        optim.step()  # keeps the scheduler from warning about the call order
        sched.step()
    return lrs


class MaskedOptimizer:
    """An elementwise optimiser over stacked tensors ``(K, ...)`` that updates only active rows.

    Row ``k`` follows exactly the update of ``torch.optim.SGD`` / ``Adam`` / ``AdamW`` (``OPTIM`` keys
    ``NAME``, ``WEIGHT_DECAY``, ``MOMENTUM``, ``SGD_DAMPNING``, ``SGD_NESTEROV``, ``ADAM_BETA1/2``,
    ``ADAM_EPS``) applied to client ``k`` alone: momentum buffers start at a client's first step and
    Adam's bias correction uses the client's own step count.
    """

    def __init__(self, params: list[torch.Tensor], optim_cfg, num_clients: int):
        self.name = str(optim_cfg.NAME).lower()
        if self.name not in MASKED_OPTIMIZERS:
            raise BatchingUnsupported(f"OPTIM.NAME {self.name}: supported {MASKED_OPTIMIZERS}")
        self.params = list(params)
        self.wd = float(optim_cfg.WEIGHT_DECAY)
        self.momentum = float(optim_cfg.MOMENTUM)
        self.dampening = float(optim_cfg.SGD_DAMPNING)
        self.nesterov = bool(optim_cfg.SGD_NESTEROV)
        self.betas = (float(optim_cfg.ADAM_BETA1), float(optim_cfg.ADAM_BETA2))
        self.eps = float(optim_cfg.get("ADAM_EPS", 1e-8))
        device = self.params[0].device
        self.steps = torch.zeros(num_clients, device=device)  # per-client step count
        self.state: list[dict[str, torch.Tensor]] = [{} for _ in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @staticmethod
    def _rows(vector: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``(K,)`` -> ``(K, 1, ..., 1)`` broadcastable against ``like`` ``(K, ...)``."""
        return vector.view(-1, *([1] * (like.dim() - 1)))

    @torch.no_grad()
    def step(self, active: torch.Tensor, lr: float) -> None:
        """One step for the clients where ``active`` (``(K,)`` bool) is True, learning rate ``lr``."""
        first = active & (self.steps == 0)
        self.steps += active.to(self.steps.dtype)
        for p, state in zip(self.params, self.state, strict=True):
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            mask = self._rows(active, p)
            new = self._sgd(p, grad, state, self._rows(first, p), lr) if self.name == "sgd" else \
                self._adam(p, grad, state, lr)
            p.copy_(torch.where(mask, new, p))
            for key, value in list(state.items()):
                if key.endswith("_new"):
                    state[key[:-4]] = torch.where(mask, value, state[key[:-4]])
                    del state[key]

    def _sgd(self, p: torch.Tensor, grad: torch.Tensor, state: dict, first: torch.Tensor, lr: float) -> torch.Tensor:
        d_p = grad + self.wd * p if self.wd else grad
        if self.momentum:
            buf = state.setdefault("buf", torch.zeros_like(p))
            buf_new = torch.where(first, d_p, buf * self.momentum + (1.0 - self.dampening) * d_p)
            state["buf_new"] = buf_new
            d_p = d_p + self.momentum * buf_new if self.nesterov else buf_new
        return p - lr * d_p

    def _adam(self, p: torch.Tensor, grad: torch.Tensor, state: dict, lr: float) -> torch.Tensor:
        beta1, beta2 = self.betas
        if self.name == "adamw":
            p = p * (1.0 - lr * self.wd)
        elif self.wd:
            grad = grad + self.wd * p
        exp_avg = state.setdefault("exp_avg", torch.zeros_like(p))
        exp_avg_sq = state.setdefault("exp_avg_sq", torch.zeros_like(p))
        state["exp_avg_new"] = exp_avg_new = exp_avg.lerp(grad, 1.0 - beta1)
        state["exp_avg_sq_new"] = second = exp_avg_sq * beta2 + (1.0 - beta2) * grad * grad
        if self.name == "amsgrad":
            max_sq = state.setdefault("max_exp_avg_sq", torch.zeros_like(p))
            state["max_exp_avg_sq_new"] = second = torch.maximum(max_sq, second)
        steps = self._rows(self.steps.clamp(min=1).double(), p)  # bias corrections in float64, as torch's
        step_size = (lr / (1.0 - beta1 ** steps)).to(p.dtype)
        denom = second.sqrt() / (1.0 - beta2 ** steps).sqrt().to(p.dtype) + self.eps
        return p - step_size * exp_avg_new / denom


class _Recorded(Exception):
    """Raised by the proxy in pass 1 once the client's text-encoder inputs are recorded."""


class _TextEncoderProxy(nn.Module):
    """Stands in for ``model.text_encoder`` during a batched step (see the module docstring).

    Both ways of calling the text tower are recorded: ``forward(prompts, tokenized)`` (dense prompts)
    and ``encode_shared_prefix(prefix, suffix, eos)`` (``G`` context sets sharing the class suffixes).
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.supports_shared_prefix = bool(getattr(encoder, "supports_shared_prefix", False))
        self.mode = "record"
        self.recorded: tuple | None = None
        self.output: torch.Tensor | None = None

    def _call(self, kind: str, *inputs: torch.Tensor) -> torch.Tensor:
        if self.mode == "record":
            self.recorded = (kind, *inputs)
            raise _Recorded
        if self.output is None or self.output.shape[0] != inputs[0].shape[0]:
            raise BatchingUnsupported("compute_loss calls the text encoder more than once per step")
        out, self.output = self.output, None
        return out

    def forward(self, prompts: torch.Tensor, tokenized: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or kwargs:
            raise BatchingUnsupported("the text encoder is called with extra inputs (deep prompts?)")
        return self._call("dense", prompts, tokenized)

    def encode_shared_prefix(self, prefix: torch.Tensor, suffix: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
        return self._call("prefix", prefix, suffix, eos)


def encode_together(encoder: nn.Module, recorded: list[tuple]) -> list[torch.Tensor]:
    """One text-tower pass over every client's recorded call; returns each client's slice of the output.

    ``recorded[k]`` is ``("dense", prompts (N_k, L, d), tokenized (N_k, L))`` or ``("prefix", prefix
    (G_k, P, d), suffix (C, S, d), eos (C,))``; every client must call the tower the same way (and, for
    the prefix pass, with the same class suffixes: the clients share the class set).
    """
    kinds = {r[0] for r in recorded}
    if len(kinds) != 1:
        raise BatchingUnsupported(f"clients call the text tower in different ways: {sorted(kinds)}")
    sizes = [r[1].shape[0] for r in recorded]
    if kinds == {"dense"}:
        feats = encoder(torch.cat([r[1] for r in recorded]), torch.cat([r[2] for r in recorded]))
    else:
        suffix, eos = recorded[0][2], recorded[0][3]
        if any(r[2] is not suffix and not torch.equal(r[2], suffix) for r in recorded[1:]):
            raise BatchingUnsupported("clients encode different class sets")
        feats = encoder.encode_shared_prefix(torch.cat([r[1] for r in recorded]), suffix, eos)
    return list(feats.split(sizes))


class ParameterRows:
    """Substitutes tensors for a model's trainable parameters for the duration of a ``with`` block.

    What ``torch.func.functional_call`` does, without walking the whole module tree (the frozen CLIP
    included) at every call: the places ``(module, attribute)`` holding each parameter are found
    once. ``use({name: tensor})`` puts the tensors there (a parameter shared by several modules is
    replaced everywhere) and restores the parameters on exit.
    """

    def __init__(self, model: nn.Module, names: list[str]):
        params = dict(model.named_parameters())
        by_id = {id(params[n]): n for n in names}
        self.slots: dict[str, list[tuple[nn.Module, str, nn.Parameter]]] = {n: [] for n in names}
        for module in model.modules():
            for attr, param in module._parameters.items():
                if param is not None and id(param) in by_id:
                    self.slots[by_id[id(param)]].append((module, attr, param))

    @contextlib.contextmanager
    def use(self, tensors: dict[str, torch.Tensor]):
        try:
            for name, tensor in tensors.items():
                for module, attr, _ in self.slots[name]:
                    module._parameters[attr] = tensor
            yield
        finally:
            for name in tensors:
                for module, attr, param in self.slots[name]:
                    module._parameters[attr] = param


class BatchedClients:
    """Trains the clients of a round together (module docstring). ``trainer`` must pass
    :func:`batching_support`."""

    def __init__(self, trainer: FederatedTrainer):
        reason = batching_support(trainer)
        if reason:
            raise BatchingUnsupported(reason)
        self.trainer = trainer
        self.names = list(trainer.trainable_parameters())
        self.shared = set(trainer.shared_keys())

    def train(self, starts: list[dict[str, torch.Tensor]], loaders: list, epochs: int,
              contexts: list[dict]) -> list[tuple[dict[str, float], dict[str, torch.Tensor]]]:
        """Train ``K = len(starts)`` clients for ``epochs`` epochs.

        Args:
            starts: client k's downloaded state (every trainable tensor by name, CPU or device).
            loaders: client k's epoch iterables of ``{"feat": (B, *F), "label": (B,)}`` batches.
            epochs: local epochs.
            contexts: client k's ``{"client": id, "round": r}`` (error messages).

        Returns, per client: the last epoch's summary (size-weighted means of ``loss``, ``acc`` and the
        method's extra terms, as ``local_train``) and its trained state (CPU copies, every trainable name).
        """
        t = self.trainer
        device, k = t.device, len(starts)
        stacked = {n: torch.stack([s[n].to(device, torch.float32) for s in starts]).requires_grad_(True)
                   for n in self.names}
        round_start = [{n: s[n].to(device) for n in self.names if n in self.shared} for s in starts]
        optim = MaskedOptimizer(list(stacked.values()), t.cfg.OPTIM, k)
        lrs = epoch_learning_rates(t.cfg.OPTIM, epochs)
        swap = ParameterRows(t.model, self.names)
        encoder = t.model.text_encoder
        proxy = _TextEncoderProxy(encoder)
        summaries: list[dict[str, float]] = [{} for _ in range(k)]
        t.set_model_mode("train")
        t.max_epoch = epochs
        t.model.text_encoder = proxy
        try:
            for epoch in range(epochs):
                t.epoch = epoch
                sums: list[dict[str, torch.Tensor]] = [{} for _ in range(k)]
                counts = [0] * k
                iterators = [iter(loader) for loader in loaders]
                for _ in range(max((len(loader) for loader in loaders), default=0)):
                    batches = [next(it, None) for it in iterators]
                    active = [j for j in range(k) if batches[j] is not None]
                    if not active:
                        break
                    losses = self._step(swap, proxy, encoder, stacked, round_start, batches, active, sums, counts)
                    optim.zero_grad()
                    torch.stack(losses).sum().backward()
                    mask = torch.zeros(k, dtype=torch.bool, device=device)
                    mask[active] = True
                    optim.step(mask, lrs[epoch])
                summaries = self._epoch_summaries(sums, counts, contexts, summaries)
        finally:
            t.model.text_encoder = encoder
            t.round_start_shared = {}
        dtypes = {n: p.dtype for n, p in t.trainable_parameters().items()}
        states = [{n: stacked[n][j].detach().to("cpu", dtypes[n], copy=True) for n in self.names} for j in range(k)]
        return list(zip(summaries, states, strict=True))

    def _step(self, swap: ParameterRows, proxy: _TextEncoderProxy, encoder: nn.Module, stacked: dict,
              round_start: list[dict], batches: list, active: list[int], sums: list[dict],
              counts: list[int]) -> list[torch.Tensor]:
        """Both passes of one step for the ``active`` clients; returns their losses (scalars)."""
        t = self.trainer
        inputs = {j: (batches[j]["feat"].to(t.device), batches[j]["label"].to(t.device)) for j in active}
        rows = {n: stacked[n].unbind(0) for n in self.names}  # one backward node per tensor, not one per client
        params = {j: {n: rows[n][j] for n in self.names} for j in active}
        results, recorded = {}, {}
        proxy.mode = "record"
        with t.autocast():
            for j in active:  # pass 1: record each client's prompts
                t.round_start_shared = round_start[j]
                try:
                    with swap.use(params[j]):
                        results[j] = t.compute_loss(*inputs[j])
                except _Recorded:
                    recorded[j] = proxy.recorded
            if recorded:  # one text-tower pass over every client's prompts
                order = list(recorded)
                pieces = encode_together(encoder, [recorded[j] for j in order])
                proxy.mode = "replay"
                for j, piece in zip(order, pieces, strict=True):  # pass 2: the losses
                    t.round_start_shared = round_start[j]
                    proxy.output = piece
                    with swap.use(params[j]):
                        results[j] = t.compute_loss(*inputs[j])
                    proxy.output = None
        losses = []
        for j in active:
            loss, logits, extra = results[j]
            labels = inputs[j][1]
            bs = int(labels.shape[0])
            acc = (logits.argmax(dim=1) == labels).float().mean() * 100.0
            for key, value in {"loss": loss, "acc": acc, **extra}.items():
                value = torch.as_tensor(value, device=t.device).detach().float() * bs
                sums[j][key] = sums[j][key] + value if key in sums[j] else value
            counts[j] += bs
            losses.append(loss.float())
        return losses

    @staticmethod
    def _epoch_summaries(sums: list[dict], counts: list[int], contexts: list[dict],
                         previous: list[dict]) -> list[dict[str, float]]:
        """Size-weighted epoch means per client (one host sync); a non-finite loss raises."""
        out = []
        for j, (s, n) in enumerate(zip(sums, counts, strict=True)):
            if not n:
                out.append(previous[j])
                continue
            summary = {key: float(v) / n for key, v in s.items()}
            if not math.isfinite(summary["loss"]):
                where = ", ".join(f"{a} {b}" for a, b in contexts[j].items())
                raise NonFiniteLossError(f"loss is {summary['loss']} ({where})", contexts[j])
            out.append(summary)
        return out
