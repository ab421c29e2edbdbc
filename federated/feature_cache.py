"""Frozen image features computed once and reused by every client, round and later run.

For a method whose image encoder is frozen and not prompted, an image feature is a pure function of
the image and its augmentation. Training images are therefore encoded as ``V`` augmented views
(``FED.CACHE_VIEWS``) once; every epoch draws one view per image. The features live on disk as
``.npy`` files (memory-mapped when read) under ``FED.CACHE_DIR`` (default ``$FEDTV_CACHE`` or
``~/.cache/fedtv``), keyed by everything they depend on: the items (ids and labels), the backbone and
its weights, the transform, the number of views and the cache seed. Any change gives a new key.
Evaluation sets are cached the same way (one view, test transform: ``EvalFeatureCache``), so later
runs reuse them too. A file that is unreadable (truncated), has the wrong shape, or whose probed rows
no longer match the encoder (weights replaced at the same path) is rebuilt (``DiskFeatureCache.check``).

Trade-off (documented for comparisons with the published code): the published implementations draw
a fresh augmentation at every step; the cache draws from ``V`` fixed views per image. With
``FED.FEATURE_CACHE False`` every step encodes freshly augmented images again.
"""
from __future__ import annotations

import hashlib
import logging
import os

import numpy as np
import torch
from tqdm import tqdm

from dassl.data import DatasetWrapper
from dassl.utils.atomic import atomic_write

logger = logging.getLogger("fedtv.cache")


def default_cache_dir() -> str:
    return os.path.join(os.environ.get("FEDTV_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "fedtv")),
                        "features")


_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


def weights_fingerprint(weights_source: str) -> str:
    """What identifies the CLIP weights: the content hash of a weights file (so replacing the file at the
    same path invalidates the cache; computed once per process), else the tag / "random" itself."""
    if not os.path.isfile(weights_source):
        return weights_source
    stat = os.stat(weights_source)
    id_ = (os.path.abspath(weights_source), stat.st_size, stat.st_mtime_ns)
    if id_ not in _FINGERPRINTS:
        h = hashlib.sha256()
        with open(weights_source, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _FINGERPRINTS[id_] = f"sha256:{h.hexdigest()}"
    return _FINGERPRINTS[id_]


def cache_key(items, backbone: str, weights: str, transform, views: int, seed: int,
              positions: list[int] | None = None) -> str:
    """A hash of everything the features depend on (``weights``: see ``weights_fingerprint``;
    ``positions``: the items' view-seed positions when they are not ``0..N-1``)."""
    h = hashlib.sha256()
    for text in (backbone, weights, repr(transform), str(views), str(seed), str(len(items))):
        h.update(text.encode())
        h.update(b"\0")
    for item in items:
        h.update(f"{item.impath}|{item.label}\n".encode())
    if positions is not None and list(positions) != list(range(len(items))):
        h.update(("positions " + " ".join(map(str, positions))).encode())
    return h.hexdigest()[:24]


def _atomic_save(path: str, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, array))


def _view_seed(seed: int, i: int, v: int) -> int:
    return (seed * 1_000_003 + i * 9_176 + v * 7_919) & 0x7FFFFFFF


@torch.inference_mode()
def encode_pairs(trainer, wrapper: DatasetWrapper, pairs: list[tuple[int, int]], seed: int,
                 positions: list[int] | None = None) -> np.ndarray:
    """Features ``(len(pairs), *F)`` (float32) of view ``v`` of item ``i`` for each ``(i, v)`` in ``pairs``;
    the view is seeded from the item's position (``positions[i]``, default ``i``). The caller's torch RNG
    state is left as it was: a node that builds its cache in the middle of a seeded local training
    trains exactly as one that read the cache from disk."""
    images = []
    with torch.random.fork_rng(devices=_cuda_devices()):
        for i, v in pairs:
            torch.manual_seed(_view_seed(seed, i if positions is None else positions[i], v))
            images.append(wrapper[i]["img"])
    return trainer.encode_images(torch.stack(images).to(trainer.device)).float().cpu().numpy()


def _cuda_devices() -> list[int]:
    """Every CUDA device (``torch.manual_seed`` seeds them all), none without CUDA."""
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def encode_views(trainer, items, transform, views: int, seed: int, batch_size: int = 128,
                 show_progress: bool = True, positions: list[int] | None = None) -> np.ndarray:
    """Features ``(N, V, *F)`` (float16) of ``V`` augmented views of every item (``F`` = the trainer's
    image-feature shape, e.g. ``(D,)`` or ``(1 + P, D)`` with patch tokens).

    View ``v`` of item ``i`` is produced with the torch RNG seeded from ``(seed, positions[i], v)``
    (``positions`` default ``0..N-1``), so the cache is reproducible in any process, and a node that
    caches only its own clients' items (at their positions in the run's item list) gets the same views.
    """
    wrapper = DatasetWrapper(items, transform)
    out: np.ndarray | None = None
    total = len(items) * views
    order = [(i, v) for v in range(views) for i in range(len(items))]
    bar = tqdm(total=total, desc="caching image features", disable=not show_progress, leave=False)
    for start in range(0, total, batch_size):
        chunk = order[start : start + batch_size]
        feats = encode_pairs(trainer, wrapper, chunk, seed, positions)
        if out is None:
            out = np.zeros((len(items), views, *feats.shape[1:]), dtype=np.float16)
        for (i, v), f in zip(chunk, feats, strict=True):
            out[i, v] = f
        bar.update(len(chunk))
    bar.close()
    return out


#: Largest relative difference ``||cached - fresh|| / ||fresh||`` accepted for a probed row: fp16
#: storage and bf16 autocast stay far below it; other weights or another transform are far above.
PROBE_TOLERANCE = 2e-2


class DiskFeatureCache:
    """Features ``(N, V, *F)`` of ``items`` on disk under ``FED.CACHE_DIR``, memory-mapped when read.

    A file that cannot be read (truncated, corrupt), has the wrong shape or dtype, or whose probed
    rows (first and last item, recomputed now) differ from fresh features -- e.g. weights replaced in
    place at the same path -- is reported and rebuilt. ``prefix`` names the kind of set ("train",
    "test"); ``views`` 1 with a deterministic transform gives the evaluation features.
    """

    def __init__(self, cfg, trainer, items, transform, views: int, prefix: str,
                 positions: list[int] | None = None):
        self.items = list(items)
        self.positions = None if positions is None else [int(p) for p in positions]
        if not self.items:
            raise ValueError(f"no items to cache ({prefix} features)")
        self.views = max(int(views), 1)
        self.seed = int(cfg.FED.CACHE_SEED)
        self.trainer, self.transform = trainer, transform
        directory = cfg.FED.CACHE_DIR or default_cache_dir()
        os.makedirs(directory, exist_ok=True)
        clip = trainer.model.clip
        # Trainers whose frozen image path returns something else than the pooled feature (e.g. patch
        # tokens) declare it in ``image_feature_kind``; it is part of the key.
        kind = trainer.image_feature_kind
        backbone = f"{clip.name}|{kind}" if kind else clip.name
        key = cache_key(self.items, backbone, weights_fingerprint(clip.weights_source), transform, self.views,
                        self.seed, self.positions)
        self.path = os.path.join(directory, f"{prefix}-{key}.npy")
        problem = self.check() if os.path.isfile(self.path) else "absent"
        if problem is None:
            logger.debug("image features from cache %s", self.path)
        else:
            if problem != "absent":
                logger.warning("feature cache %s is unusable (%s): rebuilding it", self.path, problem)
            array = encode_views(trainer, self.items, transform, self.views, self.seed,
                                 show_progress=bool(cfg.FED.SHOW_PROGRESS), positions=self.positions)
            _atomic_save(self.path, array)
            logger.debug("cached %d x %d image features in %s", len(self.items), self.views, self.path)
        self.features = np.load(self.path, mmap_mode="r")

    def check(self) -> str | None:
        """``None`` when the file on disk is usable, else what is wrong with it."""
        try:
            array = np.load(self.path, mmap_mode="r")
        except (ValueError, OSError, EOFError) as err:
            return f"unreadable: {err}"
        if array.dtype != np.float16 or array.ndim < 3 or array.shape[:2] != (len(self.items), self.views):
            return f"shape {array.shape} {array.dtype}, expected ({len(self.items)}, {self.views}, ...) float16"
        wrapper = DatasetWrapper(self.items, self.transform)
        pairs = [(0, 0), (len(self.items) - 1, self.views - 1)]
        fresh = encode_pairs(self.trainer, wrapper, pairs, self.seed, self.positions)
        if fresh.shape[1:] != array.shape[2:]:
            return f"feature shape {array.shape[2:]}, the encoder gives {fresh.shape[1:]}"
        for (i, v), f in zip(pairs, fresh, strict=True):
            cached = np.asarray(array[i, v], dtype=np.float32)
            if not np.all(np.isfinite(cached)):
                return f"non-finite features at item {i} view {v}"
            error = float(np.linalg.norm(cached - f) / max(np.linalg.norm(f), 1e-12))
            if error > PROBE_TOLERANCE:
                return f"stale: item {i} view {v} differs from fresh features by {error:.3g} (relative)"
        return None


class TrainFeatureCache(DiskFeatureCache):
    """On-disk cache of ``FED.CACHE_VIEWS`` augmented training views of each item (``positions``: the
    items' positions in the run's list of training items, which seed their views; default ``0..N-1``)."""

    def __init__(self, cfg, trainer, items, transform, positions: list[int] | None = None):
        super().__init__(cfg, trainer, items, transform, views=int(cfg.FED.CACHE_VIEWS), prefix="train",
                         positions=positions)
        self.index = {id(item): n for n, item in enumerate(self.items)}

    def loader(self, items, batch_size: int, generator: torch.Generator) -> CachedFeatureLoader:
        """An epoch iterator over ``items`` (a subset of the cached items) yielding feature batches."""
        rows = np.array([self.index[id(item)] for item in items], dtype=np.int64)
        labels = torch.tensor([item.label for item in items], dtype=torch.long)
        return CachedFeatureLoader(self.features, rows, labels, batch_size, generator)


class EvalFeatureCache(DiskFeatureCache):
    """On-disk cache of the features of an evaluation set: one view of each item with the test transform."""

    def __init__(self, cfg, trainer, items, transform):
        super().__init__(cfg, trainer, items, transform, views=1, prefix="test")

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``(N, *F)`` float32 and labels ``(N,)`` in item order."""
        feats = torch.from_numpy(np.asarray(self.features[:, 0], dtype=np.float32))
        return feats, torch.tensor([item.label for item in self.items], dtype=torch.long)


class CachedFeatureLoader:
    """Yields ``{"feat": (B, *F) float32, "label": (B,)}`` batches; each epoch shuffles the items and draws
    one cached view per item from ``generator``. Same number of batches as a DataLoader without drop_last."""

    def __init__(self, features: np.ndarray, rows: np.ndarray, labels: torch.Tensor, batch_size: int,
                 generator: torch.Generator):
        self.features, self.rows, self.labels = features, rows, labels
        self.batch_size, self.generator = int(batch_size), generator

    def __len__(self) -> int:
        return (len(self.rows) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        n, views = len(self.rows), self.features.shape[1]
        order = torch.randperm(n, generator=self.generator)
        view = torch.randint(views, (n,), generator=self.generator)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            feats = self.features[self.rows[idx.numpy()], view[idx].numpy()]
            yield {"feat": torch.from_numpy(np.asarray(feats, dtype=np.float32)), "label": self.labels[idx]}
