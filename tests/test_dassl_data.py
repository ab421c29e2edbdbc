"""Tests for dassl.data: transforms, loaders, DataManager, few-shot and base/new subsampling."""
import numpy as np
import pytest
import torch
from PIL import Image

from dassl.config import get_cfg_default
from dassl.data import DatasetBase, DatasetWrapper, Datum, build_data_loader, build_transform


def _cfg(size=(8, 8), transforms=("random_resized_crop", "random_flip", "normalize")):
    cfg = get_cfg_default()
    cfg.INPUT.SIZE = size
    cfg.INPUT.TRANSFORMS = transforms
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


def _items(labels, domain=0, shape=(10, 12)):
    return [
        Datum(impath=f"mem://{i}", label=y, domain=domain, classname=f"c{y}",
              image=np.full((*shape, 3), 10 * i % 256, dtype=np.uint8))
        for i, y in enumerate(labels)
    ]


# ---------------------------------------------------------------- transforms
def test_train_and_test_transform_shapes_and_inputs():
    cfg = _cfg(size=(8, 8))
    pil = Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8))
    gray = Image.fromarray(np.zeros((20, 30), dtype=np.uint8))
    arr = np.zeros((20, 30, 3), dtype=np.uint8)
    for is_train in (True, False):
        tfm = build_transform(cfg, is_train=is_train)
        for img in (pil, gray, arr):
            out = tfm(img)
            assert out.shape == (3, 8, 8) and out.dtype == torch.float32


def test_normalize_uses_pixel_mean_std():
    cfg = _cfg(transforms=("normalize",))
    out = build_transform(cfg, is_train=False)(np.full((9, 9, 3), 255, dtype=np.uint8))
    expected = [(1 - m) / s for m, s in zip(cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD, strict=True)]
    assert torch.allclose(out.mean(dim=(1, 2)), torch.tensor(expected))
    raw = build_transform(_cfg(transforms=()), is_train=False)(np.full((9, 9, 3), 255, dtype=np.uint8))
    assert torch.all(raw == 1.0)


def test_test_transform_resizes_shorter_side_then_center_crops():
    cfg = _cfg(size=(4, 4), transforms=())
    cfg.INPUT.INTERPOLATION = "nearest"
    img = np.zeros((4, 8, 3), dtype=np.uint8)
    img[:, 2:6] = 255  # only the central 4 columns are white
    out = build_transform(cfg, is_train=False)(img)
    assert torch.all(out == 1.0)


def test_random_resized_crop_respects_scale():
    cfg = _cfg(size=(6, 6), transforms=("random_resized_crop",))
    cfg.INPUT.RRCROP_SCALE = (0.5, 0.5)
    tfm = build_transform(cfg, is_train=True)
    rrc = tfm.transforms[1]
    assert rrc.scale == (0.5, 0.5) and rrc.size == (6, 6)


def test_transform_errors():
    with pytest.raises(ValueError, match="valid names: .*random_resized_crop.*normalize"):
        build_transform(_cfg(transforms=("random_translation",)), is_train=True)
    cfg = _cfg()
    cfg.INPUT.INTERPOLATION = "lanczos"
    with pytest.raises(ValueError, match="bicubic"):
        build_transform(cfg, is_train=False)
    with pytest.raises(TypeError, match="uint8"):
        build_transform(_cfg(), is_train=False)(np.zeros((4, 4, 3), dtype=np.float32))


# ---------------------------------------------------------------- loaders
def test_dataset_wrapper_in_memory_and_on_disk(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(np.full((5, 5, 3), 255, dtype=np.uint8)).save(path)
    data = [_items([3])[0], Datum(impath=str(path), label=1, domain=2, classname="x")]
    ds = DatasetWrapper(data, build_transform(_cfg(transforms=()), is_train=False))
    first, second = ds[0], ds[1]
    assert first["img"].shape == (3, 8, 8) and first["label"] == 3 and first["impath"] == "mem://0"
    assert first["index"] == 0 and first["domain"] == 0
    assert torch.all(second["img"] == 1.0) and (second["label"], second["domain"], second["index"]) == (1, 2, 1)
    views = DatasetWrapper(data, ds.transform, k_tfm=2, return_img0=True)[1]
    assert len(views["img"]) == 2 and views["img0"].shape == (3, 5, 5) and torch.all(views["img0"] == 1.0)
    bad = DatasetWrapper([Datum(impath=str(tmp_path / "missing.png"))], ds.transform)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        bad[0]


def test_build_data_loader_batches_and_samplers():
    cfg = _cfg()
    data = _items([0, 1, 2, 0, 1])
    test_loader = build_data_loader(cfg, data, 2, False, build_transform(cfg, False))
    batches = list(test_loader)
    assert [b["img"].shape for b in batches] == [(2, 3, 8, 8), (2, 3, 8, 8), (1, 3, 8, 8)]
    assert torch.cat([b["index"] for b in batches]).tolist() == [0, 1, 2, 3, 4]
    assert batches[0]["label"].tolist() == [0, 1] and batches[0]["impath"] == ["mem://0", "mem://1"]

    def order(seed):
        loader = build_data_loader(cfg, data, 5, True, build_transform(cfg, True),
                                   generator=torch.Generator().manual_seed(seed))
        return next(iter(loader))["index"].tolist()

    assert order(0) == order(0) and sorted(order(0)) == [0, 1, 2, 3, 4]
    assert len({tuple(order(s)) for s in range(5)}) > 1
    dl = build_data_loader(cfg, data, 2, True, build_transform(cfg, True), drop_last=True)
    assert len(dl) == 2
    with pytest.raises(ValueError, match="empty"):
        build_data_loader(cfg, [], 2, False, build_transform(cfg, False))


# ---------------------------------------------------------------- few-shot and base/new
def test_generate_fewshot_dataset():
    base = DatasetBase()
    data = _items([0] * 5 + [1] * 2 + [2] * 4)
    out = base.generate_fewshot_dataset(data, num_shots=3, seed=1)
    counts = {y: sum(d.label == y for d in out) for y in range(3)}
    assert counts == {0: 3, 1: 2, 2: 3}
    assert len({id(d) for d in out}) == len(out)  # without replacement
    assert [d.impath for d in out] == [d.impath for d in base.generate_fewshot_dataset(data, num_shots=3, seed=1)]
    rep = base.generate_fewshot_dataset(data, num_shots=3, repeat=True, seed=1)
    assert sum(d.label == 1 for d in rep) == 3
    assert base.generate_fewshot_dataset(data, num_shots=-1) is data
    a, b = base.generate_fewshot_dataset(data, data[:5], num_shots=1, seed=0)
    assert len(a) == 3 and len(b) == 1


def test_subsample_classes():
    data = _items([4, 0, 1, 2, 3, 4])
    test = _items([3, 1])
    base_train, base_test = DatasetBase.subsample_classes(data, test, subsample="base")
    assert sorted({d.label for d in base_train}) == [0, 1, 2]  # 5 labels -> m = ceil(5/2) = 3
    assert [d.label for d in base_test] == [1]
    (new_train,) = DatasetBase.subsample_classes(data, subsample="new")
    assert [(d.label, d.classname) for d in new_train] == [(1, "c4"), (0, "c3"), (1, "c4")]
    assert [d.label for d in data] == [4, 0, 1, 2, 3, 4]  # inputs untouched
    assert all(n is not o for n in new_train for o in data)
    (everything,) = DatasetBase.subsample_classes(data, subsample="all")
    assert [d.label for d in everything] == [4, 0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="'all', 'base' or 'new'"):
        DatasetBase.subsample_classes(data, subsample="novel")
