"""``ClientRuntime``: trains and evaluates the clients of ITS process.

A runtime holds the process's trainer (one frozen CLIP, shared by every client it serves), the run's
data, the loaders and feature caches of its own clients only (``clients=None``: every client, the
in-process engine; ``[]``: each client's training features are cached when it first trains here, a
Flower node), and how its clients train: together (``FED.BATCH_CLIENTS``, ``federated/batched.py``)
or one after another, with the fallback when batching turns out impossible.

It knows nothing of rounds beyond the index it is given: it receives :class:`~federated.run_state.Download`
objects (plus the personal tensors of each client) and returns
:class:`~federated.run_state.ClientUpdate` objects; sampling, aggregation, results and checkpoints
belong to the coordinator (``federated/coordinator.py``). Every random choice is seeded from
``(SEED, round, client)``, so a client trains identically in whichever process trains it.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from tqdm import tqdm

from dassl.data import build_data_loader, build_transform
from federated.batched import BatchedClients, BatchingUnsupported, batching_support
from federated.data import FederatedData
from federated.errors import ClassSpaceError, ConfigError
from federated.feature_cache import EvalFeatureCache, TrainFeatureCache
from federated.results import harmonic_mean, summaries
from federated.run_state import ClientUpdate, Download, State, derive_seed, seed_everything
from trainers.method import RoundContext

logger = logging.getLogger("fedtv.runtime")


class ClientRuntime:
    """Trains and evaluates the clients of this process (see the module docstring)."""

    def __init__(self, cfg, trainer, data: FederatedData, clients: list[int] | None = None):
        """``clients``: the clients this process trains when not all of them (a Flower node: ``[]``, then
        each client's training features are cached when it first trains, only its own)."""
        self.cfg = cfg
        self.trainer = trainer
        self.data = data
        self.seed = int(cfg.SEED)
        self.tfm_train = build_transform(cfg, is_train=True)
        self.tfm_test = build_transform(cfg, is_train=False)
        self.show_progress = bool(cfg.FED.SHOW_PROGRESS)
        self._test_loaders: dict[str, object] = {}
        self.feature_cache = None
        reference = bool(cfg.FED.REFERENCE_MODE)
        # evaluation features on disk as well (later runs reuse them); never in reference mode
        self.eval_disk_cache = bool(cfg.FED.FEATURE_CACHE) and trainer.image_features_cacheable and not reference
        self.train_cache_enabled = self.eval_disk_cache and bool(trainer.trainable_parameters())
        self._client_caches: dict[int, TrainFeatureCache] = {}
        if self.train_cache_enabled:
            union = list({id(item): item for client in data.train for item in client}.values())
            # an item's position in the run's item list seeds its cached views, in every process
            self._positions = {id(item): n for n, item in enumerate(union)}
            if union and clients is None:
                self.feature_cache = TrainFeatureCache(cfg, trainer, union, self.tfm_train)
        self.batched = None
        self.execution: dict = {}  # how the run is executed (results.json "execution")
        # why clients train one after another (None: together), said in the run's first lines
        self.sequential_reason: str | None = "--reference-mode" if reference else "FED.BATCH_CLIENTS False"
        if cfg.FED.BATCH_CLIENTS and not reference:
            self.sequential_reason = batching_support(trainer) or (
                None if self.train_cache_enabled else "no training feature cache") or (
                None if data.client_classnames is None else "each client has its own label space (class-chunks)")
            if self.sequential_reason is None:
                self.batched = BatchedClients(trainer)
        #: the method's own round protocol (``ROUND_PROTOCOL``; None: local training + aggregation)
        self.protocol = round_protocol(self)
        if self.protocol is not None and clients is not None:
            raise ConfigError(f"{type(trainer).__name__} trains by synchronous FedSGD (ROUND_PROTOCOL "
                              f"'{type(trainer).ROUND_PROTOCOL}'), which runs in process only: use --engine inprocess")
        why = trainer.in_process_only() if clients is not None else ""
        if why:
            raise ConfigError(f"{type(trainer).__name__}: {why} runs in process only: use --engine inprocess")

    def execution_text(self) -> str:
        """How the clients of a round train, in words."""
        if self.batched is not None:
            return "trained together (one vectorised step)"
        return f"trained one after another ({self.sequential_reason})"

    def execution_record(self) -> dict:
        """How the run is executed (``results.json`` ``execution``; results agree up to the documented
        tolerances whatever the mechanisms)."""
        t = self.trainer
        self.execution.update({"reference_mode": bool(self.cfg.FED.REFERENCE_MODE),
                               "feature_cache": self.train_cache_enabled,
                               "batched_clients": self.batched is not None, "precision": t.precision,
                               "device": str(t.device)})
        return self.execution

    # ------------------------------------------------------------------ data
    def train_loader(self, cid: int, round_idx: int):
        generator = torch.Generator().manual_seed(derive_seed(self.seed, round_idx, cid, 1))
        cache = self.train_cache(cid)
        if cache is not None:
            return cache.loader(self.data.train[cid], self.cfg.DATALOADER.TRAIN_X.BATCH_SIZE, generator)
        return build_data_loader(self.cfg, self.data.train[cid], self.cfg.DATALOADER.TRAIN_X.BATCH_SIZE,
                                 is_train=True, transform=self.tfm_train, generator=generator)

    def train_cache(self, cid: int) -> TrainFeatureCache | None:
        """The cached training features client ``cid`` trains on: the run's cache of every client's
        items (in process), or, on a process that trains only some clients, a cache of this client's
        own items (their views seeded by their positions in the run's item list: the same features)."""
        if self.feature_cache is not None or not self.train_cache_enabled or not self.data.train[cid]:
            return self.feature_cache
        if cid not in self._client_caches:
            items = self.data.train[cid]
            self._client_caches[cid] = TrainFeatureCache(self.cfg, self.trainer, items, self.tfm_train,
                                                         positions=[self._positions[id(i)] for i in items])
        return self._client_caches[cid]

    def test_loader(self, key: str, items):
        if self.eval_disk_cache and items and not self.trainer.has_cached_features(key):
            self.trainer.set_cached_features(key, *EvalFeatureCache(self.cfg, self.trainer, items,
                                                                    self.tfm_test).tensors())
        if key not in self._test_loaders:
            self._test_loaders[key] = build_data_loader(self.cfg, items, self.cfg.DATALOADER.TEST.BATCH_SIZE,
                                                        is_train=False, transform=self.tfm_test)
        return self._test_loaders[key]

    # ------------------------------------------------------------------ training
    def load(self, download: Download, personal: State) -> None:
        """Put client ``download.client``'s model into the trainer: its download and personal tensors, and the
        method's server information for it."""
        self.trainer.load_state({**download.shared, **personal})
        self.trainer.set_server_information(download.server_information)
        if self.data.client_classnames is not None:  # class-chunks: the client's own label space
            self.trainer.set_classnames(self.data.label_space(download.client))

    def train(self, round_idx: int, downloads: list[Download], personal: dict[int, State],
              side_wanted: set[int]) -> list[ClientUpdate]:
        """Train the round's clients (``downloads`` in training order; ``personal``: client id -> its personal
        tensors; ``side_wanted``: the clients whose side information the coordinator lacks), together
        (``FED.BATCH_CLIENTS``) or one after another, or by the method's round protocol (``ROUND_PROTOCOL``).
        Returns one update per client, in training order."""
        if self.protocol is not None:
            trained = self.protocol.train_round(round_idx, {d.client: {**d.shared, **personal[d.client]}
                                                            for d in downloads})
            return [self._update(cid, summary, state, None) for cid, summary, state in trained]
        if self.batched is not None:
            try:
                return self._train_batched(round_idx, downloads, personal, side_wanted)
            except BatchingUnsupported as err:  # raised before anything was trained
                logger.warning("FED.BATCH_CLIENTS: clients are trained one after another: %s", err)
                self.sequential_reason = str(err)
                self.batched = None
                self.execution["batched_clients"] = False
        return [self.train_client(d, personal[d.client], round_idx, d.client in side_wanted)
                for d in tqdm(downloads, desc=f"round {round_idx + 1} clients", leave=False,
                              disable=not self.show_progress)]

    def _train_batched(self, round_idx: int, downloads: list[Download], personal: dict[int, State],
                       side_wanted: set[int]) -> list[ClientUpdate]:
        t = self.trainer
        if any(d.server_information for d in downloads):
            raise BatchingUnsupported("the clients download per-client server information")
        cids = [d.client for d in downloads]
        seed_everything(derive_seed(self.seed, round_idx, 0))
        loaders = [self.train_loader(c, round_idx) for c in cids]
        sides = {cid: t.side_information(loader) for cid, loader in zip(cids, loaders, strict=True)
                 if cid in side_wanted}
        trained = self.batched.train([{**d.shared, **personal[d.client]} for d in downloads], loaders,
                                     int(self.cfg.OPTIM.MAX_EPOCH),
                                     [RoundContext(client=c, round=round_idx + 1) for c in cids])
        return [self._update(cid, summary, state, sides.get(cid))
                for cid, (summary, state) in zip(cids, trained, strict=True)]

    def train_client(self, download: Download, personal: State, round_idx: int,
                     side_information: bool = False) -> ClientUpdate:
        """Client ``download.client``'s local training in round ``round_idx`` (0-based) from its download and
        ``personal`` tensors, seeded from ``(SEED, round, client)``. With ``side_information`` (the
        coordinator lacks it: the client's first training) the update carries the trainer's
        ``side_information`` of the client's loader. The in-process loop and the Flower ClientApp both
        train through here."""
        t, cid = self.trainer, download.client
        self.load(download, personal)
        seed_everything(derive_seed(self.seed, round_idx, cid, 0))
        loader = self.train_loader(cid, round_idx)
        side = t.side_information(loader) if side_information else None
        summary = t.local_train(loader, int(self.cfg.OPTIM.MAX_EPOCH), RoundContext(client=cid, round=round_idx + 1))
        return self._update(cid, summary, t.get_state(t.shared_keys() + t.personal_keys()), side)

    def _update(self, cid: int, summary: dict, state: State, side: State | None) -> ClientUpdate:
        t = self.trainer
        return ClientUpdate(client=cid, shared={k: state[k] for k in t.shared_keys()}, summary=summary,
                            num_examples=len(self.data.train[cid]), side_information=side,
                            personal={k: state[k] for k in t.personal_keys()},
                            optimizer=t.client_optimizer_tensors(cid) if t.client_optimizer_state else None)

    # ------------------------------------------------------------------ evaluation
    def accuracy_on(self, key: str, items, classnames) -> float | None:
        """Accuracy of the loaded state on ``items`` (labelled in ``classnames``); None when not measurable."""
        if items is None or not items:
            return None
        loader = self.test_loader(key, items)
        original = list(self.trainer.classnames)
        try:
            self.trainer.set_classnames(classnames)
        except ClassSpaceError as err:
            logger.warning("%s accuracy not measured: %s", key, err)
            return None
        try:
            return self.trainer.evaluate(loader, key=key)["accuracy"]
        finally:
            self.trainer.set_classnames(original)

    def split_accuracy(self, split: str) -> float | None:
        """Accuracy of the loaded state on the ``"base"`` or ``"novel"`` test images: the mean over the
        datasets of a mixture (each with its own classes), else the single set; None when not measurable."""
        values = [self.accuracy_on(s.key, s.items, s.classnames) for s in self.data.eval_sets(split)]
        values = [v for v in values if v is not None]
        return float(sum(values) / len(values)) if values else None

    def evaluate_client(self, download: Download, personal: State, base_novel: bool = True) -> dict:
        """Client ``download.client``'s model on its own test split (``local``, ``macro_f1``; None without
        test items) and, with ``base_novel``, on all base / novel test images. Used by the in-process
        loop and, on each node, by the Flower ClientApp."""
        cid = download.client
        self.load(download, personal)
        out: dict = {"local": None, "macro_f1": None, "base": None, "novel": None}
        if self.data.test[cid]:
            metrics = self.trainer.evaluate(self.test_loader(f"local{cid}", self.data.test[cid]), key=f"local{cid}")
            out["local"], out["macro_f1"] = metrics["accuracy"], metrics["macro_f1"]
        if base_novel:
            out["base"], out["novel"] = self.split_accuracy("base"), self.split_accuracy("novel")
        return out

    def evaluate_clients(self, downloads: list[Download], personal: dict[int, State]) -> dict[int, dict]:
        """``evaluate_client`` for every download (client id -> metrics). When every client holds the same
        model (no personal tensors besides the client state evaluation does not read, one shared state, no server
        information), Base / Novel are measured once and count for every client."""
        t = self.trainer
        evaluated_personal = set(t.personal_keys()) - set(t.client_state_keys())
        same_model = (not evaluated_personal and all(d.shared is downloads[0].shared for d in downloads)
                      and not any(d.server_information for d in downloads))
        per_client: dict[int, dict] = {}
        first = None
        for d in downloads:
            per_client[d.client] = self.evaluate_client(d, personal[d.client],
                                                        base_novel=not (same_model and first is not None))
            if same_model and first is not None:
                per_client[d.client].update(base=per_client[first]["base"], novel=per_client[first]["novel"])
            first = d.client if first is None else first
        return per_client

    def global_model_metrics(self, global_state: State, personal: State) -> dict:
        """``global_base`` / ``global_novel`` / ``global_hm`` (percent): the method's global model (the
        trainer's ``global_model()``: the shared tensors ``global_state`` alone) on every base / novel test
        image. {} when the method has no global model besides the personalised ones or the run has no base /
        novel sets. ``personal``: any client's personal tensors (loaded so the state is complete; bypassed).
        Leaves ``global_state`` and ``personal`` loaded in the trainer."""
        trainer, data = self.trainer, self.data
        if not trainer.has_global_model or not (data.eval_sets("base") or data.eval_sets("novel")):
            return {}
        trainer.load_state({**global_state, **personal})
        with trainer.global_model():
            base, novel = self.split_accuracy("base"), self.split_accuracy("novel")
        return {"global_base": base, "global_novel": novel, "global_hm": harmonic_mean(base, novel)}

    def evaluate_zero_shot(self, excluded: set[int]) -> dict:
        """Hand-crafted-prompt CLIP on the same evaluation sets (the reference the papers start from),
        every client's test split but those ``excluded``."""
        t, data = self.trainer, self.data
        domains = data.client_domains or [None] * data.num_users
        local = {}
        for cid, items in enumerate(data.test):
            if items and cid not in excluded:
                loader = self.test_loader(f"local{cid}", items)
                local[cid] = t.evaluate_zero_shot(loader, data.label_space(cid), data.template_of(domains[cid]),
                                                  key=f"local{cid}")["accuracy"]
        out = {"template": data.template, "local": data.local_mean(local)}
        for split in ("base", "novel"):
            values = [t.evaluate_zero_shot(self.test_loader(s.key, s.items), s.classnames, data.template_of(s.group),
                                           key=s.key)["accuracy"] for s in data.eval_sets(split)]
            out[split] = float(np.mean(values)) if values else None
        out.update(summaries(out["local"], out["base"], out["novel"]))
        return out


def round_protocol(runtime: ClientRuntime):
    """The round protocol the trainer declares (``ROUND_PROTOCOL``): None for ``"fedavg"`` (local training
    then aggregation), the synchronous DP FedSGD of ``federated/fedsgd.py`` for ``"fedsgd"``."""
    name = type(runtime.trainer).ROUND_PROTOCOL
    if name == "fedavg":
        return None
    if name == "fedsgd":
        from federated.fedsgd import FedSGDProtocol

        return FedSGDProtocol(runtime, derive_seed)
    raise ConfigError(f"{type(runtime.trainer).__name__} declares an unknown ROUND_PROTOCOL '{name}'")
