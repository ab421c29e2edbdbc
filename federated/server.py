"""The federated round loop, method-agnostic.

Per round: sample clients (``FED.FRAC``; every client in round 1), train each sampled client for
``OPTIM.MAX_EPOCH`` local epochs starting from the global shared tensors plus its own personal
tensors, aggregate the uploaded shared tensors with the trainer's aggregator, evaluate every
client every ``TEST.EVAL_FREQ`` rounds (and at the end), write the results files and an atomic
checkpoint. Every random choice of a round is seeded from ``(SEED, round, client)``, so a run
resumed from a checkpoint ends exactly as an uninterrupted one.
"""
from __future__ import annotations

import logging
import os
import statistics
import time

import numpy as np
import torch
from tqdm import tqdm

from dassl.data import build_data_loader, build_transform
from dassl.engine import NonFiniteLossError
from federated import console
from federated.batched import BatchedClients, BatchingUnsupported, batching_support
from federated.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint, set_rng_state
from federated.data import FederatedData
from federated.errors import ClassSpaceError, ConfigError, TrainingDiverged
from federated.feature_cache import EvalFeatureCache, TrainFeatureCache
from federated.results import ResultsWriter, format_table, global_model_metrics, summaries
from federated.split_file import write_split_file
from federated.state import state_nbytes
from utils.plots import plot_accuracy

logger = logging.getLogger("fedtv.server")


def derive_seed(*parts: int) -> int:
    """A 31-bit seed that depends on every part (stable across processes and platforms)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class FederatedServer:
    """Runs a federated experiment of ``trainer`` over ``data`` (see the module docstring)."""

    def __init__(self, cfg, trainer, data: FederatedData, clients: list[int] | None = None):
        """``clients``: the clients this process trains when not all of them (a Flower node: ``[]``, then
        each client's training features are cached when it first trains, only its own)."""
        self.cfg = cfg
        self.trainer = trainer
        self.data = data
        self.num_users = data.num_users
        self.excluded_clients = self._excluded_clients()  # a bad FED.EXCLUDE_CLIENTS fails here, before anything runs
        self.seed = int(cfg.SEED)
        self.output_dir = cfg.OUTPUT_DIR
        self.checkpoint_path = os.path.join(self.output_dir, CHECKPOINT_NAME)
        self.tfm_train = build_transform(cfg, is_train=True)
        self.tfm_test = build_transform(cfg, is_train=False)
        self.aggregator = trainer.build_aggregator()
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
        #: client id -> the trainer's ``side_information`` of that client (sent once, when it first trains)
        self.side_information: dict[int, dict] = {}
        self.batched = None
        self.execution: dict = {}  # how the run is executed (results.json "execution")
        # why clients train one after another (None: together), said in the run's first lines
        self.sequential_reason: str | None = "--reference-mode" if reference else "FED.BATCH_CLIENTS False"
        if cfg.FED.BATCH_CLIENTS and not reference:
            self.sequential_reason = batching_support(trainer) or (
                None if self.train_cache_enabled else "no training feature cache")
            if self.sequential_reason is None:
                self.batched = BatchedClients(trainer)
        #: the method's own round protocol (``ROUND_PROTOCOL``; None: local training + aggregation)
        self.protocol = round_protocol(self)
        if self.protocol is not None and clients is not None:
            raise ConfigError(f"{type(trainer).__name__} trains by synchronous FedSGD (ROUND_PROTOCOL "
                              f"'{type(trainer).ROUND_PROTOCOL}'), which runs in process only: use --engine inprocess")

    def execution_text(self) -> str:
        """How the clients of a round train, in words."""
        if self.batched is not None:
            return "trained together (one vectorised step)"
        return f"trained one after another ({self.sequential_reason})"

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

    def sample_clients(self, round_idx: int) -> list[int]:
        """Clients trained in round ``round_idx`` (0-based), in the order they train: all in round 0
        (``0..K-1``), then ``max(int(frac*K), 1)`` drawn without replacement, in the order drawn (as the
        published loops train them: with one optimiser shared by every client, ``FED.SHARED_OPTIMIZER``,
        the order carries the momentum from client to client)."""
        excluded = self.excluded_clients
        if round_idx == 0 and self.cfg.FED.ALL_CLIENTS_FIRST_ROUND:
            return [c for c in range(self.num_users) if c not in excluded]
        m = max(int(float(self.cfg.FED.FRAC) * self.num_users), 1)
        rng = np.random.default_rng(derive_seed(self.seed, round_idx, 2))
        if not excluded:
            return [int(c) for c in rng.choice(self.num_users, size=min(m, self.num_users), replace=False)]
        eligible = [c for c in range(self.num_users) if c not in excluded]
        return [int(c) for c in rng.choice(eligible, size=min(m, len(eligible)), replace=False)]

    def _excluded_clients(self) -> set[int]:
        """``FED.EXCLUDE_CLIENTS``: clients that never train and are not evaluated (published ``pop(5)``)."""
        excluded = {int(c) for c in self.cfg.FED.get("EXCLUDE_CLIENTS", [])}
        if any(not 0 <= c < self.num_users for c in excluded) or len(excluded) >= self.num_users:
            raise ConfigError(f"FED.EXCLUDE_CLIENTS {sorted(excluded)} must name some (not all) of the clients "
                              f"0..{self.num_users - 1}")
        return excluded

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

    def _downloads(self, global_state: dict, client_global: dict[int, dict]) -> list[dict]:
        """The shared state each client holds: the global one, or its personalised mix."""
        return [client_global.get(cid, global_state) for cid in range(self.num_users)]

    def evaluate_client(self, cid: int, state: dict, base_novel: bool = True) -> dict:
        """Client ``cid``'s model (``state``: its shared + personal tensors) on its own test split
        (``local``, ``macro_f1``; None without test items) and, with ``base_novel``, on all base / novel
        test images. Used by ``evaluate`` and, on each node, by the Flower ClientApp."""
        self.trainer.load_state(state)
        out: dict = {"local": None, "macro_f1": None, "base": None, "novel": None}
        if self.data.test[cid]:
            metrics = self.trainer.evaluate(self.test_loader(f"local{cid}", self.data.test[cid]), key=f"local{cid}")
            out["local"], out["macro_f1"] = metrics["accuracy"], metrics["macro_f1"]
        if base_novel:
            out["base"] = self.accuracy_on("base", self.data.base_test, self.data.base_classnames)
            out["novel"] = self.accuracy_on("novel", self.data.novel_test, self.data.novel_classnames)
        return out

    def combine_evaluations(self, per_client: dict[int, dict]) -> dict:
        """The round's evaluation record from ``evaluate_client`` results (client id -> metrics):
        Local = mean over clients with a test split (and its population std), Base / Novel = mean over
        clients, HM = 2BN/(B+N)."""
        for cid, m in sorted(per_client.items()):
            logger.debug(console.client_eval_line(cid, m))
        local = {cid: m["local"] for cid, m in sorted(per_client.items()) if m["local"] is not None}
        f1 = [m["macro_f1"] for _, m in sorted(per_client.items()) if m["macro_f1"] is not None]
        values = list(local.values())

        def mean_of(name: str) -> float | None:
            vals = [m[name] for _, m in sorted(per_client.items()) if m[name] is not None]
            return float(sum(vals) / len(vals)) if vals else None

        base, novel = mean_of("base"), mean_of("novel")
        return {
            "local": float(sum(values) / len(values)) if values else None,
            "local_std": float(statistics.pstdev(values)) if len(values) > 1 else (0.0 if values else None),
            "local_macro_f1": float(sum(f1) / len(f1)) if f1 else None,
            "local_per_client": {str(k): v for k, v in local.items()},
            "local_per_domain": self.data.per_domain(local),  # None unless clients belong to domains
            "base": base,
            "novel": novel,
            **summaries(float(sum(values) / len(values)) if values else None, base, novel),
        }

    def evaluate(self, shared: list[dict], personal: list[dict]) -> dict:
        """Local accuracy per client (own test split), and Base / Novel / HM in base-to-novel runs.

        ``shared[i]`` / ``personal[i]``: client i's shared (downloaded) and personal tensors. When every
        client holds the same model (no personal tensors, one shared state), Base / Novel are measured
        once and count for every client.
        """
        same_model = not self.trainer.personal_keys() and all(s is shared[0] for s in shared)
        per_client: dict[int, dict] = {}
        first = None
        for cid, (s, p) in enumerate(zip(shared, personal, strict=True)):
            if cid in self.excluded_clients:
                continue
            per_client[cid] = self.evaluate_client(cid, {**s, **p}, base_novel=not (same_model and first is not None))
            if same_model and first is not None:
                per_client[cid].update(base=per_client[first]["base"], novel=per_client[first]["novel"])
            first = cid if first is None else first
        record = self.combine_evaluations(per_client)
        if all(s is shared[0] for s in shared):  # one global model (not a personalised aggregation)
            record.update(global_model_metrics(self, shared[0], personal[0]))
        return record

    def evaluate_zero_shot(self) -> dict:
        """Hand-crafted-prompt CLIP on the same evaluation sets (the reference the papers start from)."""
        t = self.trainer
        template = self.data.template
        local = {}
        for cid, items in enumerate(self.data.test):
            if items and cid not in self.excluded_clients:
                loader = self.test_loader(f"local{cid}", items)
                local[cid] = t.evaluate_zero_shot(loader, self.data.classnames, template, key=f"local{cid}")["accuracy"]
        out = {"template": template, "local": float(np.mean(list(local.values()))) if local else None}
        for split in ("base", "novel"):
            items = getattr(self.data, f"{split}_test")
            names = getattr(self.data, f"{split}_classnames")
            out[split] = (t.evaluate_zero_shot(self.test_loader(split, items), names, template, key=split)["accuracy"]
                          if items else None)
        out.update(summaries(out["local"], out["base"], out["novel"]))
        return out

    # ------------------------------------------------------------------ the run
    def run(self, resume: bool = False) -> dict:
        """Run (or resume) the experiment; returns the results dict also written to ``results.json``."""
        t = self.trainer
        shared_keys, personal_keys = t.shared_keys(), t.personal_keys()
        global_state = t.initial_shared_state()
        personal = [t.initial_personal_state(cid) for cid in range(self.num_users)]
        client_global: dict[int, dict] = {}  # personalised aggregation: what each client downloads
        start_round, results, ckpt = 0, None, None
        if resume and os.path.isfile(self.checkpoint_path):
            ckpt = load_checkpoint(self.checkpoint_path, t, self.num_users, cfg=self.cfg)
            start_round, results = int(ckpt["round"]), ckpt["results"]
            global_state, personal = ckpt["global"], ckpt["personal"]
            client_global = {int(k): v for k, v in ckpt.get("client_global", {}).items()}
            set_rng_state(ckpt["rng"])
            logger.info("resuming from %s after round %d", self.checkpoint_path, start_round)
        elif resume:
            logger.warning("--resume: no checkpoint in %s, starting from scratch", self.output_dir)
        elif os.path.isfile(self.checkpoint_path):
            logger.warning("%s holds an earlier run: it is overwritten (use --resume to continue it)", self.output_dir)
        # the run is valid: from here on the output folder changes
        write_split_file(os.path.join(self.output_dir, "split.json"), self.data, self.cfg)
        writer = ResultsWriter(self.output_dir, self.cfg, results)
        if ckpt is not None:
            writer.record_resume(start_round, ckpt["config_changes"])
        # Cost accounting: trainable parameter counts (shared = what is uploaded each round).
        params = t.trainable_parameters()
        writer.results["params"] = {"shared": sum(params[k].numel() for k in shared_keys),
                                    "personal": sum(params[k].numel() for k in personal_keys),
                                    "total": sum(p.numel() for p in params.values())}
        # how the run was executed (speed mechanisms; results agree up to the documented tolerances)
        self.execution.update({"reference_mode": bool(self.cfg.FED.REFERENCE_MODE),
                               "feature_cache": self.train_cache_enabled,
                               "batched_clients": self.batched is not None, "precision": t.precision,
                               "device": str(t.device)})
        writer.results["execution"] = self.execution
        if start_round == 0 and self.cfg.FED.ZS_REFERENCE:
            writer.set_zero_shot(self.evaluate_zero_shot())
            logger.info(console.zero_shot_line(writer.results["zero_shot"]))
        rounds = int(self.cfg.OPTIM.ROUND)
        if not t.trainable_parameters():
            rounds, start_round = 1, 0  # nothing to train: evaluate once
        eval_freq = max(int(self.cfg.TEST.EVAL_FREQ), 1)
        for r in range(start_round, rounds):
            started = time.time()
            clients = self.sample_clients(r)
            uploads, sizes, losses, accs = [], [], [], []
            down = state_nbytes(global_state)
            if t.trainable_parameters():
                starts = {cid: {**client_global.get(cid, global_state), **personal[cid]} for cid in clients}
                try:
                    trained = self.train_round(r, starts)
                except NonFiniteLossError as err:
                    writer.close()
                    raise TrainingDiverged(f"client {err.context.get('client', '?')} in round {r + 1}: {err}. "
                                           f"{self._kept_after(r)}; lower OPTIM.LR or use PREC fp32") from None
                # aggregated (and recorded) in client-id order, whatever the training order: sums in the
                # same order as Flower's strategy, which receives the uploads unordered
                trained = sorted(trained, key=lambda item: item[0])
                for cid, summary, state in trained:
                    logger.debug(console.client_train_line(r + 1, cid, summary, len(self.data.train[cid])))
                    uploads.append({k: state[k] for k in shared_keys})
                    personal[cid] = {k: state[k] for k in personal_keys}
                    sizes.append(len(self.data.train[cid]))
                    losses.append(summary.get("loss", float("nan")))
                    accs.append(summary.get("acc", float("nan")))
                agg_info = {}
                if shared_keys:
                    ids = [cid for cid, _, _ in trained]  # the uploads' order
                    global_state, agg_info = self.aggregator(uploads, sizes, global_state, ids, round_idx=r,
                                                             side_information=self.side_information)
                    client_global.update(agg_info.pop("per_client", {}))
            else:
                agg_info = {}
            record = round_record(r, sorted(clients), sizes, losses, accs, agg_info,
                                  up=state_nbytes(uploads[0]) if uploads else 0,
                                  down=down if t.trainable_parameters() else 0)
            record["train_order"] = clients
            if (r + 1) % eval_freq == 0 or r + 1 == rounds:
                record.update(self.evaluate(self._downloads(global_state, client_global), personal))
            record["seconds"] = time.time() - started
            if self.protocol is not None:
                writer.results["privacy"] = self.protocol.report(r + 1)
            writer.add_round(record)
            save_checkpoint(self.checkpoint_path, round_done=r + 1, trainer=t, global_state=global_state,
                            personal=personal, results=writer.results, num_users=self.num_users,
                            client_global=client_global)
            logger.info(console.round_line(record, rounds))
        return self.finish(writer)

    def _kept_after(self, rounds_done: int) -> str:
        """What the output folder holds when round ``rounds_done + 1`` fails (said in the error message)."""
        if rounds_done > 0:
            return (f"The checkpoint after round {rounds_done} ({self.checkpoint_path}) and the results of rounds "
                    f"1-{rounds_done} are kept (continue with --resume)")
        if os.path.isfile(self.checkpoint_path):
            return (f"No round finished, so this run wrote no checkpoint ({self.checkpoint_path} is still the "
                    f"earlier run's)")
        return "No round finished, so there is no checkpoint"

    def train_round(self, round_idx: int, starts: dict[int, dict]) -> list[tuple[int, dict, dict]]:
        """Train the round's clients (``starts``: client id -> its downloaded shared + personal tensors),
        together (``FED.BATCH_CLIENTS``, ``federated/batched.py``) or one after another; returns
        ``(client id, summary, trained state of every trainable tensor)`` per client, in order."""
        t = self.trainer
        if self.protocol is not None:
            return self.protocol.train_round(round_idx, starts)
        if self.batched is None:
            out = []
            for cid, state in tqdm(starts.items(), desc=f"round {round_idx + 1} clients", leave=False,
                                   disable=not self.show_progress):
                summary, side = self.train_client(cid, round_idx, state, cid not in self.side_information)
                if side is not None:
                    self.side_information[cid] = side
                out.append((cid, summary, t.get_state(t.shared_keys() + t.personal_keys())))
            return out
        cids = list(starts)
        seed_everything(derive_seed(self.seed, round_idx, 0))
        loaders = [self.train_loader(c, round_idx) for c in cids]
        for cid, loader in zip(cids, loaders, strict=True):
            if cid not in self.side_information:
                side = t.side_information(loader)
                if side is not None:
                    self.side_information[cid] = side
        try:
            trained = self.batched.train([starts[c] for c in cids], loaders,
                                         int(self.cfg.OPTIM.MAX_EPOCH),
                                         [{"client": c, "round": round_idx + 1} for c in cids])
        except BatchingUnsupported as err:  # raised before anything was trained
            logger.warning("FED.BATCH_CLIENTS: clients are trained one after another: %s", err)
            self.sequential_reason = str(err)
            self.batched = None
            self.execution["batched_clients"] = False
            return self.train_round(round_idx, starts)
        return [(cid, summary, state) for cid, (summary, state) in zip(cids, trained, strict=True)]

    def train_client(self, cid: int, round_idx: int, state: dict,
                     side_information: bool = False) -> tuple[dict[str, float], dict | None]:
        """Client ``cid``'s local training in round ``round_idx`` (0-based) from ``state`` (its downloaded
        shared + personal tensors), seeded from ``(SEED, round, client)``. Returns the trainer's summary
        and, when ``side_information`` is asked for (the client's first training), the trainer's
        ``side_information`` of the client's loader (None when the method has none). The in-process
        loop and the Flower ClientApp both train through here."""
        t = self.trainer
        t.load_state(state)
        seed_everything(derive_seed(self.seed, round_idx, cid, 0))
        loader = self.train_loader(cid, round_idx)
        side = t.side_information(loader) if side_information else None
        summary = t.local_train(loader, int(self.cfg.OPTIM.MAX_EPOCH), context={"client": cid, "round": round_idx + 1})
        return summary, side

    def finish(self, writer: ResultsWriter) -> dict:
        """Close the results files, plot the accuracy curves, log the table; returns the results."""
        writer.close()
        plot_accuracy(writer.results, os.path.join(self.output_dir, "accuracy.png"))
        logger.info("\n%s", format_table(writer.results))
        return writer.results

    def evaluate_saved(self, model_dir: str) -> dict:
        """``--eval-only``: evaluate the final states saved in ``model_dir`` on this run's data."""
        ckpt = load_checkpoint(model_dir, self.trainer, self.num_users)
        client_global = {int(k): v for k, v in ckpt.get("client_global", {}).items()}
        record = self.evaluate(self._downloads(ckpt["global"], client_global), ckpt["personal"])
        record["round"] = int(ckpt["round"])
        record["model_dir"] = model_dir
        return record


def round_protocol(server: FederatedServer):
    """The round protocol the trainer declares (``ROUND_PROTOCOL``): None for ``"fedavg"`` (local training
    then aggregation, this module), the synchronous DP FedSGD of ``federated/fedsgd.py`` for ``"fedsgd"``."""
    name = type(server.trainer).ROUND_PROTOCOL
    if name == "fedavg":
        return None
    if name == "fedsgd":
        from federated.fedsgd import FedSGDProtocol

        return FedSGDProtocol(server, derive_seed)
    raise ConfigError(f"{type(server.trainer).__name__} declares an unknown ROUND_PROTOCOL '{name}'")


def round_record(round_idx: int, clients: list[int], sizes: list[int], losses: list[float], accs: list[float],
                 agg_info: dict, up: int, down: int) -> dict:
    """The training part of a round's results record (``round`` is 1-based; losses / accuracies are
    averaged with the clients' train-set sizes as weights)."""
    return {
        "round": round_idx + 1,
        "clients": clients,
        "train_loss": float(np.average(losses, weights=sizes)) if losses else None,
        "train_acc": float(np.average(accs, weights=sizes)) if accs else None,
        "aggregation": agg_info,
        "bytes_up_per_client": up,
        "bytes_down_per_client": down,
    }

