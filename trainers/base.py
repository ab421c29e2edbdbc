"""``FederatedTrainer``: what every FedTV trainer shares.

A federated trainer wraps ONE frozen CLIP (loaded once per process and shared by every client) and
a small set of trainable tensors. A method is a subclass that declares (``trainers/method.py``):

* ``CFG_NODE``, ``cfg_defaults()`` and ``CFG_RULES``: its config node, the node's defaults, and the
  allowed values and ranges of its keys (checked before the model is built);
* ``SHARED``: name patterns of its **shared** tensors (sent to the server and aggregated); every other
  trainable tensor is **personal** (never leaves the client);
* ``CLIENT_STATE``: name patterns of buffers that hold a client's own training state (FedMVP's LoRA switch):
  personal like the untrained tensors, never trained, not read by evaluation;
* ``build_aggregator()``: the server's rule (FedAvg unless the method or ``FED.AGGREGATION`` says otherwise),
  and ``side_information(loader)``: what that rule needs to know about a client's data (default none);
* ``build_server_step()`` and ``set_server_information(info)``: a server step besides aggregation whose
  download differs per client (default none; pFedMoAP's experts);
* ``build_model()`` (set ``self.model``) and ``compute_loss(features, labels)``;
* ``SEQUENTIAL``: why its clients must be trained one after another by the trainer's own loop
  (``""``: the engines may train them together);
* ``ROUND_PROTOCOL``: ``"fedavg"`` (local epochs, then the server aggregates the uploads) or ``"fedsgd"``
  (synchronous steps with server-side noise, ``federated/fedsgd.py``; the method provides
  ``client_gradients`` and ``apply_gradients``, DP-FPL). The loop and the optimiser (``local_train``,
  ``forward_backward``, ``build_optimizers``, ``run_epoch``) belong to the engines: methods do not override them
  (``optim_overrides()`` gives a registered model its own ``OPTIM`` keys);
* ``in_process_only()``: why the configuration runs in the in-process engine only (training state kept in the
  process's trainer; a Flower node refuses it);
* ``NEEDS_ROUND_START_STATE``: ``compute_loss`` reads the round's downloaded shared tensors from
  ``self.round_context.round_start`` (FedProx); both engines provide them (``trainers.method.RoundContext``).

The server drives it through:

* ``shared_keys()`` / ``personal_keys()``, ``get_state(keys)`` / ``load_state(state)``;
* ``local_train(loader, epochs, context: RoundContext)``: fresh optimiser and scheduler per call (per client per
  round), so no momentum leaks between clients (``FED.SHARED_OPTIMIZER True``: the published codes'
  single optimiser and scheduler, created once and carried across clients and rounds,
  docs/PUBLISHED_CODE.md; for comparisons only);
* ``evaluate(data, key)``: accuracy / error / macro-F1, with frozen image features cached per
  evaluation set when the image path is frozen (``image_features_cacheable``);
* ``set_classnames(names)``: switch the label space (base -> novel evaluation);
* ``global_model()``: within it, a method with a global model besides the personalised ones
  (``has_global_model``: a module of the model declares ``global_only``) computes that global model --
  its shared tensors alone, the personal parts bypassed -- for the global accuracy next to the
  personalised one;
* ``build_aggregator()``: the server-side aggregation rule (FedAvg by default).

"""
from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dassl.engine import TrainerX
from dassl.optim import build_lr_scheduler, build_optimizer
from trainers.method import RoundContext, Rule, check_rules, shared_names
from trainers.reference_cost import apply_reference_costs

logger = logging.getLogger("fedtv.trainer")

_CLIP_CACHE: dict[tuple[str, str, str], Any] = {}


def load_frozen_clip(cfg, device: torch.device):
    """Load the CLIP named by ``cfg.MODEL.BACKBONE`` once per process (cached) and freeze it."""
    from clip import load_clip

    key = (cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.WEIGHTS, str(device))
    if key not in _CLIP_CACHE:
        loaded = load_clip(cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.WEIGHTS, device=device)
        loaded.model.to(device).eval()
        for p in loaded.model.parameters():
            p.requires_grad_(False)
        _CLIP_CACHE[key] = loaded
    return _CLIP_CACHE[key]


def local_schedule(optim_cfg, epochs: int, round_number: int | None = None):
    """``(optimiser config, epochs already elapsed)`` of one client's local training of ``epochs`` epochs.

    Default: a schedule over the local epochs alone (``MAX_EPOCH = epochs``, starting at epoch 0), as a
    fresh per-client scheduler. ``OPTIM.SCHEDULE_OVER_ROUNDS``: one schedule over the whole run
    (``MAX_EPOCH = ROUND * epochs``) that round ``round_number`` (1-based) enters at epoch
    ``(round_number - 1) * epochs`` -- FedTPG's per-client cosine over the rounds, stepped once per round
    (every client trains every round there, so a client's round count is the round number).
    """
    cfg = optim_cfg.clone()
    cfg.defrost()
    cfg.MAX_EPOCH = int(epochs)
    elapsed = 0
    if bool(optim_cfg.get("SCHEDULE_OVER_ROUNDS", False)):
        cfg.MAX_EPOCH = int(epochs) * max(int(optim_cfg.ROUND), 1)
        elapsed = int(epochs) * max(int(round_number or 1) - 1, 0)
    return cfg, elapsed


def advance_scheduler(scheduler, epochs: int) -> None:
    """Step ``scheduler`` ``epochs`` times before training (its optimiser has not stepped yet: no warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(epochs):
            scheduler.step()


class FederatedTrainer(TrainerX):
    """Base of every federated trainer (see the module docstring)."""

    #: Name of the trainer's node under ``cfg.TRAINER`` (e.g. ``"PROMPTFL"``).
    CFG_NODE: str = ""
    #: Allowed values of the node's keys (``trainers/method.py``); merged with the bases' rules.
    CFG_RULES: dict[str, Rule] = {}
    #: Name patterns of the trainable tensors shared with the server. Every other trainable tensor is personal.
    SHARED: tuple[str, ...] = ()
    #: Name patterns of buffers holding a client's own training state (e.g. FedMVP's LoRA switch): personal (kept
    #: per client, checkpointed, on the Flower node), never trained, never aggregated, not read by evaluation.
    CLIENT_STATE: tuple[str, ...] = ()
    #: Why this method's clients must be trained one after another by its own loop ("" = they need not).
    SEQUENTIAL: str = ""
    #: How a round trains: "fedavg" (local training + aggregation) or "fedsgd" (federated/fedsgd.py).
    ROUND_PROTOCOL: str = "fedavg"
    #: ``compute_loss`` reads ``round_context.round_start`` (the shared tensors downloaded this round).
    NEEDS_ROUND_START_STATE: bool = False
    #: The local training an engine is running (client, 1-based round, round-start state); set by the engines.
    round_context: RoundContext = RoundContext()
    #: Frozen image features are a pure function of the image: evaluation caches them.
    image_features_cacheable: bool = True
    #: What ``encode_images`` returns when it is not the pooled feature ("" = pooled; FedOTP: "tokens"):
    #: part of the feature cache's key.
    image_feature_kind: str = ""

    def __init__(self, cfg, classnames: list[str] | None = None, dm=None):
        check_rules(type(self), cfg)
        self._feature_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._shared_optimizers_built = False
        #: FED.CLIENT_OPTIMIZER_STATE: client id -> {model name: its optimiser's per-tensor state (momentum)}
        self._client_optim_states: dict[int, dict[str, dict]] = {}
        super().__init__(cfg, dm=dm, classnames=classnames)
        self.evaluator.verbose = False  # the server logs labelled per-client lines instead of Dassl's blocks
        if self.reference_mode:  # the published per-step cost, outside the methods' code
            apply_reference_costs(self.model)
        self.model.to(self.device)
        self.scaler = None
        self._initial_shared = self.get_state(self.shared_keys())
        self._initial_personal = self.get_state(self.personal_keys())

    # ------------------------------------------------------------------ config
    @classmethod
    def cfg_defaults(cls):
        """This method's config node with its defaults (a yacs ``CfgNode``); None: the method has none."""
        return None

    @classmethod
    def extend_cfg(cls, cfg) -> None:
        """Add ``cfg.TRAINER.<CFG_NODE>`` (``cfg_defaults()``) unless a method sharing the node added it."""
        if cls.CFG_NODE and cls.CFG_NODE not in cfg.TRAINER:
            node = cls.cfg_defaults()
            if node is not None:
                cfg.TRAINER[cls.CFG_NODE] = node

    @property
    def tcfg(self):
        """This trainer's config node (``cfg.TRAINER.<CFG_NODE>``)."""
        return self.cfg.TRAINER[self.CFG_NODE]

    @property
    def reference_mode(self) -> bool:
        """``FED.REFERENCE_MODE``: the published way of running (fp32, no cached image features, a Dassl host
        check of every step's loss, and the published text cost: ``trainers/reference_cost.py``)."""
        return bool(self.cfg.get("FED", {}).get("REFERENCE_MODE", False))

    @property
    def shared_optimizer(self) -> bool:
        """``FED.SHARED_OPTIMIZER``: one optimiser for every client and round, as the published codes."""
        return bool(self.cfg.get("FED", {}).get("SHARED_OPTIMIZER", False))

    @property
    def client_optimizer_state(self) -> bool:
        """``FED.CLIENT_OPTIMIZER_STATE``: each client keeps its optimiser state (momentum) between rounds."""
        return bool(self.cfg.get("FED", {}).get("CLIENT_OPTIMIZER_STATE", False))

    def client_optimizer_tensors(self, cid: int) -> dict[str, torch.Tensor]:
        """``FED.CLIENT_OPTIMIZER_STATE``: client ``cid``'s kept optimiser state as named CPU tensors,
        ``"<model>/<parameter index>/<key>"`` (e.g. ``model/0/momentum_buffer``); {} when it has none. What a Flower
        node keeps in its store between the client's trainings (the trainer of a Flower process is not the
        client's own)."""
        out = {}
        for name, state in self._client_optim_states.get(cid, {}).items():
            for index, entries in state.items():
                for key, value in entries.items():
                    if value is None:  # e.g. SGD's momentum buffer without momentum: the same as absent
                        continue
                    if not isinstance(value, torch.Tensor):
                        raise TypeError(f"{name} optimiser state {key!r} is a {type(value).__name__}, not a tensor")
                    out[f"{name}/{index}/{key}"] = value.detach().to("cpu", copy=True)
        return out

    def set_client_optimizer_tensors(self, cid: int, tensors: dict[str, torch.Tensor]) -> None:
        """The inverse of :meth:`client_optimizer_tensors`: client ``cid``'s kept optimiser state becomes
        ``tensors`` (``{}``: none, its next training starts a fresh optimiser)."""
        state: dict[str, dict] = {}
        for path, value in tensors.items():
            name, index, key = path.split("/", 2)
            state.setdefault(name, {}).setdefault(int(index), {})[key] = value.clone()
        if state:
            self._client_optim_states[cid] = state
        else:
            self._client_optim_states.pop(cid, None)

    def in_process_only(self) -> str:
        """Why this configuration runs in the in-process engine only ("": on every engine): training state that
        lives in the process's trainer, outside the run state, and passes from one client's training to another's
        (the published codes' single optimiser). A Flower process serves any of the clients (a simulation actor)
        or one message (a deployment), so such state would pass between other clients or be lost there. A method
        adds its own (pFedMoAP's published gating). (A client's own kept optimiser state,
        ``FED.CLIENT_OPTIMIZER_STATE``, travels with the client instead: :meth:`client_optimizer_tensors`.)"""
        if self.shared_optimizer:
            return ("FED.SHARED_OPTIMIZER True (the published codes' one optimiser carried from client to client in "
                    "one process; set it False on Flower)")
        return ""

    @property
    def precision(self) -> str:
        prec = str(self.tcfg.get("PREC", "fp32")) if self.CFG_NODE else "fp32"
        return prec if self.device.type == "cuda" and not self.reference_mode else "fp32"

    def autocast(self):
        """Autocast context for mixed precision on CUDA (``PREC`` fp16 / bf16); a no-op on CPU / fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision in ("fp16", "amp") else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # ------------------------------------------------------------------ shared / personal state
    def set_model_mode(self, mode: str = "train", names=None) -> None:
        """Dassl's train / test modes, except that frozen BatchNorm layers (the RN50 image tower's) stay in
        eval mode: training must neither normalise with batch statistics nor move the running statistics of
        the CLIP every client shares. (The published codes put only their prompt learner in train mode; the
        CLIP stays in the eval mode it was loaded in.) A BatchNorm with trainable parameters trains as usual."""
        super().set_model_mode(mode, names)
        if mode != "train":
            return
        for name in self.get_model_names(names):
            for module in self._models[name].modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                        p.requires_grad for p in module.parameters(recurse=False)):
                    module.eval()

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Trainable parameters of ``self.model`` by state-dict name."""
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def shared_keys(self) -> list[str]:
        """The trainable tensors matched by ``SHARED`` (in parameter order)."""
        return shared_names(self.SHARED, self.trainable_parameters())

    def client_state_keys(self) -> list[str]:
        """The buffers matched by ``CLIENT_STATE`` (a client's training state, e.g. a switch; in buffer order)."""
        return shared_names(self.CLIENT_STATE, dict(self.model.named_buffers())) if self.CLIENT_STATE else []

    def personal_keys(self) -> list[str]:
        """The trainable tensors not shared, then the client-state buffers (``CLIENT_STATE``)."""
        shared = set(self.shared_keys())
        return [n for n in self.trainable_parameters() if n not in shared] + self.client_state_keys()

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors ``get_state`` / ``load_state`` address: every parameter and the client-state buffers."""
        tensors: dict[str, torch.Tensor] = dict(self.model.named_parameters())
        if self.CLIENT_STATE:
            buffers = dict(self.model.named_buffers())
            tensors.update({k: buffers[k] for k in self.client_state_keys()})
        return tensors

    def initial_shared_state(self) -> dict[str, torch.Tensor]:
        """The shared tensors a fresh run starts from (CPU copies of the freshly built model's): a process
        that keeps its trainer between runs (a Flower ServerApp or node) starts every run from them."""
        return {k: v.clone() for k, v in self._initial_shared.items()}

    def initial_personal_state(self, cid: int) -> dict[str, torch.Tensor]:
        """The personal tensors client ``cid`` starts from (CPU copies): the freshly built model's, the same
        for every client (a method whose clients differ, e.g. FedPHA's per-client prompt lengths, overrides it)."""
        return {k: v.clone() for k, v in self._initial_personal.items()}

    def get_state(self, keys: list[str]) -> dict[str, torch.Tensor]:
        """Detached CPU copies of the named tensors (parameters or client-state buffers)."""
        params = self._state_tensors()
        return {k: params[k].detach().to("cpu", copy=True) for k in keys}

    @torch.no_grad()
    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy ``state`` into the model's parameters and client-state buffers (unknown keys or shapes: ValueError)."""
        params = self._state_tensors()
        for k, v in state.items():
            if k not in params:
                raise ValueError(f"state key '{k}' is not a parameter of {type(self).__name__}")
            if params[k].shape != v.shape:
                raise ValueError(f"state '{k}' has shape {tuple(v.shape)}, the model expects {tuple(params[k].shape)}")
            params[k].copy_(v.to(params[k].device, params[k].dtype))

    def build_aggregator(self):
        """The server's aggregation rule for this trainer (``cfg.FED.AGGREGATION`` overrides)."""
        from federated.aggregation import build_aggregator

        return build_aggregator(self.cfg.FED.AGGREGATION or "fedavg", self.cfg)

    def side_information(self, loader) -> dict[str, torch.Tensor] | None:
        """What the aggregator needs to know about a client's training data (e.g. CE-LoRA's per-class
        feature statistics), computed on the client from ``loader`` the first time it trains and sent
        once with its update; None (the default): nothing."""
        return None

    def build_server_step(self):
        """The method's server step besides aggregation, or None (the default). A server step keeps a memory
        in the run state and serves each client its own extra download: ``remember(memory, uploads,
        client_ids, round_idx)`` after each aggregation (``memory``: a dict of tensors, checkpointed) and
        ``serve(memory, client_id) -> {name: tensor}`` (given to ``set_server_information``)."""
        return None

    def set_server_information(self, info: dict[str, torch.Tensor]) -> None:
        """Take what the server step serves this client (``build_server_step``) before it trains or is
        evaluated; a method without a server step receives ``{}``."""
        if info:
            raise ValueError(f"{type(self).__name__} has no server step, but received {sorted(info)}")

    # ------------------------------------------------------------------ model pieces used by subclasses
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen CLIP image features ``(B, D)`` (not normalised), without gradient."""
        with torch.no_grad(), self.autocast():
            return self.model.encode_image(images).float()

    def pooled_image_features(self, features: torch.Tensor) -> torch.Tensor:
        """The frozen CLIP's pooled image features ``(B, D)`` from what ``encode_images`` returned.

        Used by the zero-shot reference on cached features. Identity here; a trainer whose
        ``encode_images`` returns tokens ``(B, 1 + P, D)`` (FedOTP) returns the pooled token.
        """
        return features

    def compute_loss(self, image_features: torch.Tensor,
                     labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Loss on a batch. Returns ``(loss, logits (B, C), extra summary)``; default: cross-entropy."""
        logits = self.model.logits(image_features, self.model.eval_context())
        return F.cross_entropy(logits, labels), logits, {}

    def forward_backward(self, batch: dict) -> dict[str, torch.Tensor]:
        """One step. ``batch`` holds images (``img``) or cached frozen image features (``feat``).

        Returns the step's ``loss``, ``acc`` (percent) and the method's extra terms as detached 0-d
        tensors on the device: no host sync per step (Dassl's ``run_epoch`` reads them once per epoch and
        checks the loss there). Reference mode checks every step's loss on the host, as Dassl does.
        """
        if "feat" in batch:
            features, labels = batch["feat"].to(self.device), batch["label"].to(self.device)
        else:
            images, labels = self.parse_batch_train(batch)
            features = self.encode_images(images)
        with self.autocast():
            loss, logits, extra = self.compute_loss(features, labels)
        self.model_zero_grad()
        if self.reference_mode:
            self.detect_anomaly(loss)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            for name in self.get_model_names():
                if self._optims[name] is not None:
                    self.scaler.step(self._optims[name])
            self.scaler.update()
        else:
            loss.backward()
            self.model_update()
        acc = (logits.argmax(dim=1) == labels).float().mean() * 100.0
        summary = {"loss": loss.detach().float(), "acc": acc}
        summary.update({k: torch.as_tensor(v).detach().float() for k, v in extra.items()})
        return summary

    # ------------------------------------------------------------------ local training
    def build_optimizers(self, epochs: int) -> None:
        """A fresh optimiser and LR scheduler (over ``epochs`` local epochs) for every registered model;
        with ``FED.SHARED_OPTIMIZER`` only on the first call (then the same ones, state and schedule kept)."""
        if self.shared_optimizer and self._shared_optimizers_built:
            return
        self._shared_optimizers_built = self.shared_optimizer
        overrides = self.optim_overrides()
        round_number = self.round_context.round
        for name, module in self._models.items():
            params = [p for p in module.parameters() if p.requires_grad]
            if not params:
                self.set_optimizer(name, None, None)
                continue
            model_optim = self.cfg.OPTIM.clone()
            model_optim.defrost()
            for key, value in overrides.get(name, {}).items():
                model_optim[key] = value
            optim_cfg, elapsed = local_schedule(model_optim, epochs, round_number)
            optim = build_optimizer(params, optim_cfg)
            kept = self._client_optim_states.get(self._client_id(), {}).get(name)
            if kept is not None:  # the client's momentum of its previous round (its learning rate is the schedule's)
                optim.load_state_dict({"state": kept, "param_groups": optim.state_dict()["param_groups"]})
            scheduler = build_lr_scheduler(optim, optim_cfg)
            advance_scheduler(scheduler, elapsed)
            self.set_optimizer(name, optim, scheduler)
        if self.device.type == "cuda" and self.precision in ("fp16", "amp"):
            self.scaler = torch.amp.GradScaler("cuda")

    def optim_overrides(self) -> dict[str, dict]:
        """Per registered model, the ``OPTIM`` keys its optimiser and scheduler use instead of ``cfg.OPTIM``'s
        (e.g. pFedMoAP's gating network: its own learning rate, constant); default none."""
        return {}

    def local_train(self, loader, epochs: int, context: RoundContext | None = None) -> dict[str, float]:
        """Train ``epochs`` epochs on ``loader`` with a fresh optimiser; returns the last epoch's means.

        ``context``: the client and round (``round_start`` is filled here from the loaded state when the
        method declares ``NEEDS_ROUND_START_STATE``)."""
        context = context or RoundContext()
        self.round_context = RoundContext(context.client, context.round)
        self.anomaly_context = context.where()
        self.train_loader_x = loader
        try:
            self.start_local_training(self.round_context)
            if self.NEEDS_ROUND_START_STATE:  # what the client downloaded: detached copies, on the device
                params = self.trainable_parameters()
                self.round_context = RoundContext(context.client, context.round,
                                                  {k: params[k].detach().clone() for k in self.shared_keys()})
            self.build_optimizers(epochs)
            history = self.train(0, epochs)
            if self.client_optimizer_state:
                import copy

                self._client_optim_states[self._client_id()] = {
                    name: copy.deepcopy(optim.state_dict()["state"]) for name, optim in self._optims.items()
                    if optim is not None}
            self.finish_local_training(RoundContext(context.client, context.round))
        finally:
            self.round_context = RoundContext(context.client, context.round)  # the anchors are not kept
        return history[-1] if history else {}

    def start_local_training(self, context: RoundContext) -> None:
        """Called when a client's local training starts, after its state is loaded and before the round-start
        state and optimisers are taken (``context``: its client and 1-based round); default nothing. Only the
        sequential loop calls it (the batched engine does not), so a method that uses it declares ``SEQUENTIAL``."""

    def finish_local_training(self, context: RoundContext) -> None:
        """Called after a client's local training, before its state is read (``context``: its client and
        1-based round); default nothing. A method that decides after training what it uploads (FedMGP's group
        sampling) does it here; the batched engine does not call it, so such a method declares ``SEQUENTIAL``."""

    def _client_id(self) -> int | None:
        """The client being trained (from ``local_train``'s context; None outside it)."""
        return self.round_context.client

    # ------------------------------------------------------------------ evaluation
    def set_classnames(self, classnames: list[str]) -> None:
        """Switch the label space (e.g. to the novel classes). Subclasses rebuild class-dependent buffers."""
        self.model.set_classnames(classnames)
        self.classnames = list(classnames)
        self.num_classes = len(self.classnames)
        self.lab2cname = dict(enumerate(self.classnames))
        self.evaluator._lab2cname = self.lab2cname

    def _global_modules(self) -> list[nn.Module]:
        return [m for m in self.model.modules() if hasattr(m, "global_only")]

    @property
    def has_global_model(self) -> bool:
        """Whether the method has a global model besides the personalised ones (see ``global_model``)."""
        return bool(self.shared_keys()) and bool(self.personal_keys()) and bool(self._global_modules())

    @contextlib.contextmanager
    def global_model(self):
        """Within: every module declaring ``global_only`` computes the global model (shared tensors alone)."""
        modules = self._global_modules()
        for m in modules:
            m.global_only = True
        try:
            yield
        finally:
            for m in modules:
                m.global_only = False

    def set_cached_features(self, key: str, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Provide the image features ``(N, *F)`` and labels ``(N,)`` of evaluation set ``key`` (e.g. read
        from the on-disk cache, ``federated.feature_cache.EvalFeatureCache``); moved to the device."""
        if features.shape[0] != labels.shape[0]:
            raise ValueError(f"{features.shape[0]} features for {labels.shape[0]} labels in set '{key}'")
        self._feature_cache[key] = (features.to(self.device), labels.to(self.device))

    def has_cached_features(self, key: str) -> bool:
        return key in self._feature_cache

    @torch.inference_mode()
    def cached_features(self, key: str, loader) -> tuple[torch.Tensor, torch.Tensor]:
        """Image features ``(N, D)`` and labels ``(N,)`` of an evaluation set, computed once per ``key``."""
        if key not in self._feature_cache:
            feats, labels = [], []
            for batch in loader:
                images, y = self.parse_batch_test(batch)
                feats.append(self.encode_images(images))
                labels.append(y)
            self._feature_cache[key] = (torch.cat(feats), torch.cat(labels))
        return self._feature_cache[key]

    @torch.inference_mode()
    def evaluate(self, loader, key: str | None = None) -> dict[str, float]:
        """Accuracy, error rate and macro-F1 (percent) on ``loader`` with the current state.

        With ``key`` and ``image_features_cacheable``, the frozen image features are computed once
        and reused by later calls with the same key (every client, every round); not in reference mode.
        """
        self.set_model_mode("test")
        self.evaluator.reset()
        with self.autocast():
            context = self.model.eval_context()
            if key is not None and self.image_features_cacheable and not self.reference_mode:
                feats, labels = self.cached_features(key, loader)
                for start in range(0, len(labels), 1024):
                    logits = self.model.logits(feats[start : start + 1024], context)
                    self.evaluator.process(logits.float(), labels[start : start + 1024])
            else:
                for batch in loader:
                    images, labels = self.parse_batch_test(batch)
                    logits = self.model.logits(self.encode_images(images), context)
                    self.evaluator.process(logits.float(), labels)
        return dict(self.evaluator.evaluate())

    @torch.inference_mode()
    def evaluate_zero_shot(self, loader, classnames: list[str], template: str, key: str | None = None) -> dict:
        """Hand-crafted-prompt zero-shot CLIP (``template.format(name)``) on ``loader``."""
        from trainers.handcrafted import handcrafted_text_features

        clip = self.model.clip
        text = handcrafted_text_features(clip, classnames, template)
        scale = clip.model.logit_scale.exp().float()
        self.evaluator.reset()
        if key is not None and self.image_features_cacheable and not self.reference_mode:
            feats, labels = self.cached_features(key, loader)
            feats = self.pooled_image_features(feats)
            self.evaluator.process(scale * F.normalize(feats, dim=-1) @ text.t(), labels)
        else:
            # The frozen CLIP itself, not the trainer's (possibly prompted or adapted) image path.
            for batch in loader:
                images, labels = self.parse_batch_test(batch)
                with self.autocast():
                    feats = clip.model.encode_image(images).float()
                self.evaluator.process(scale * F.normalize(feats, dim=-1) @ text.t(), labels)
        return dict(self.evaluator.evaluate())
