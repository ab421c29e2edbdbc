"""On-disk feature caches: evaluation sets cached too, corrupt / mismatched / stale files rebuilt."""
from __future__ import annotations

import glob
import logging
import os

import numpy as np
import pytest
import torch
from fedtv_testing import fast_args

from dassl.data import build_transform
from dassl.engine import build_trainer
from federated.cli import build_cfg, parse_args
from federated.data import build_federated_data
from federated.feature_cache import EvalFeatureCache, TrainFeatureCache, encode_views
from federated.run import main


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A PromptFL trainer on the small toy world with random weights, its data and a private cache dir."""
    tmp = tmp_path_factory.mktemp("cache")
    cfg = build_cfg(parse_args(fast_args(tmp / "out", ["--trainer", "PromptFL"],
                                         ["FED.CACHE_DIR", str(tmp / "features"), "FED.CACHE_VIEWS", "2"])))
    data = build_federated_data(cfg)
    trainer = build_trainer(cfg, classnames=data.classnames)
    return cfg, data, trainer


def _train_cache(world) -> TrainFeatureCache:
    cfg, data, trainer = world
    return TrainFeatureCache(cfg, trainer, data.train[0], build_transform(cfg, is_train=True))


def test_train_cache_is_reused_and_matches_fresh_encoding(world):
    cache = _train_cache(world)
    assert cache.features.shape[:2] == (len(world[1].train[0]), 2)
    assert isinstance(cache.features, np.memmap)
    stamp = os.stat(cache.path).st_mtime_ns
    again = _train_cache(world)
    assert again.path == cache.path and os.stat(again.path).st_mtime_ns == stamp  # reused, not rebuilt
    fresh = encode_views(world[2], world[1].train[0], build_transform(world[0], is_train=True), 2, 0,
                         show_progress=False)
    np.testing.assert_array_equal(np.asarray(cache.features), fresh)


@pytest.mark.parametrize("damage", ["truncate", "shape", "stale", "garbage"])
def test_damaged_train_cache_is_detected_and_rebuilt(world, damage, caplog):
    cache = _train_cache(world)
    good = np.array(cache.features)
    if damage == "truncate":  # e.g. a full disk or a killed copy
        size = os.path.getsize(cache.path)
        with open(cache.path, "r+b") as f:
            f.truncate(size // 2)
    elif damage == "shape":  # e.g. another number of views written under this name
        np.save(cache.path, good[:, :1])
    elif damage == "stale":  # same shape, other features: weights replaced at the same path
        np.save(cache.path, np.random.default_rng(0).standard_normal(good.shape).astype(np.float16))
    else:
        with open(cache.path, "wb") as f:
            f.write(b"not a numpy file")
    with caplog.at_level(logging.WARNING, logger="fedtv.cache"):
        rebuilt = _train_cache(world)
    assert "rebuilding" in caplog.text
    np.testing.assert_array_equal(np.asarray(rebuilt.features), good)


def test_eval_cache_holds_the_test_transform_features(world):
    cfg, data, trainer = world
    items = data.test[0]
    tfm = build_transform(cfg, is_train=False)
    cache = EvalFeatureCache(cfg, trainer, items, tfm)
    assert os.path.basename(cache.path).startswith("test-") and cache.features.shape[1] == 1
    feats, labels = cache.tensors()
    from dassl.data import DatasetWrapper

    images = torch.stack([DatasetWrapper(items, tfm)[i]["img"] for i in range(len(items))])
    expected = trainer.encode_images(images)
    torch.testing.assert_close(feats, expected, rtol=2e-3, atol=2e-3)  # stored as float16
    assert labels.tolist() == [item.label for item in items]
    # the key differs from the training one (views, transform)
    assert cache.path != TrainFeatureCache(cfg, trainer, items, build_transform(cfg, is_train=True)).path


def test_runs_write_and_reuse_eval_features_on_disk(tmp_path):
    cache_dir = tmp_path / "features"
    argv = fast_args(tmp_path / "a", ["--trainer", "PromptFL", "--rounds", "1"], ["FED.CACHE_DIR", str(cache_dir)])
    first = main(argv)
    files = sorted(glob.glob(str(cache_dir / "test-*.npy")))
    assert len(files) >= 3  # local test splits, base and novel sets
    stamps = {f: os.stat(f).st_mtime_ns for f in files}
    second = main([a if a != str(tmp_path / "a") else str(tmp_path / "b") for a in argv])
    assert {f: os.stat(f).st_mtime_ns for f in files} == stamps  # reused by the later run
    assert second["final"]["local"] == first["final"]["local"]
    assert first["execution"]["feature_cache"] is True
