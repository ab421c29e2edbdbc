"""Tests for dassl.utils."""
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from dassl.utils import (
    AverageMeter,
    MetricMeter,
    Registry,
    count_num_param,
    listdir_nohidden,
    load_checkpoint,
    mkdir_if_missing,
    read_image,
    read_json,
    reset_logger,
    resume_from_checkpoint,
    save_checkpoint,
    set_random_seed,
    setup_logger,
    write_json,
)


def test_setup_logger_dir_file_no_overwrite_idempotent(tmp_path):
    original = sys.stdout
    try:
        _check_logger(tmp_path)
    finally:
        reset_logger()
    assert sys.stdout is original


def _check_logger(tmp_path):
    assert setup_logger(None) is None
    out_dir = tmp_path / "run"
    path = setup_logger(str(out_dir))
    assert path == str(out_dir / "log.txt")
    print("hello log")
    assert setup_logger(str(out_dir)) == path  # idempotent: same file, no suffixed copy
    print("second line")
    assert (out_dir / "log.txt").read_text() == "hello log\nsecond line\n"
    assert os.listdir(out_dir) == ["log.txt"]

    reset_logger()  # a new run into the same folder must not overwrite the old log
    path2 = setup_logger(str(out_dir))
    assert path2 != path and os.path.basename(path2).startswith("log.txt-")
    print("run 2")
    assert (out_dir / "log.txt").read_text() == "hello log\nsecond line\n"
    assert Path(path2).read_text() == "run 2\n"

    path3 = setup_logger(str(tmp_path / "other" / "train.log"))  # switching files closes the old one
    print("x")
    assert path3 == str(tmp_path / "other" / "train.log") and Path(path3).read_text() == "x\n"
    assert Path(path2).read_text() == "run 2\n"

    sys.stdout = sys.stdout.console  # stdout replaced by someone else: same output -> same file
    assert setup_logger(str(tmp_path / "other" / "train.log")) == path3
    print("y")
    assert Path(path3).read_text() == "x\ny\n"


def test_average_and_metric_meters():
    m = AverageMeter()
    m.update(2.0)
    m.update(torch.tensor(5.0), n=2)
    assert (m.val, m.sum, m.count, m.avg) == (5.0, 12.0, 3, 4.0)
    e = AverageMeter(ema=True)
    e.update(10.0)
    e.update(0.0)
    assert e.avg == pytest.approx(9.0)
    mm = MetricMeter()
    mm.update({"loss": torch.tensor(1.0), "acc": 50})
    mm.update({"loss": 3.0, "acc": 100})
    assert mm.get_avg() == {"loss": 2.0, "acc": 75.0}
    assert str(mm) == "loss 3.0000 (2.0000) acc 100.0000 (75.0000)"
    with pytest.raises(TypeError, match="expects a dict"):
        mm.update([1.0])


def test_set_random_seed_reproducible():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    set_random_seed(7)
    a = draw()
    set_random_seed(7)
    assert draw() == a
    set_random_seed(8)
    assert draw() != a
    with pytest.raises(ValueError):
        set_random_seed(-1)


def test_count_num_param():
    model = nn.Linear(3, 2)  # 3*2 + 2
    assert count_num_param(model) == 8
    assert count_num_param(params=[torch.zeros(4, 5), torch.zeros(3)]) == 23
    assert count_num_param(params=[{"params": [torch.zeros(2)]}]) == 2
    with pytest.raises(ValueError):
        count_num_param()


def test_files_json_and_listdir(tmp_path):
    d = tmp_path / "a" / "b"
    mkdir_if_missing(str(d))
    mkdir_if_missing(str(d))
    assert d.is_dir()
    write_json({"x": [1, 2], "y": "z"}, str(tmp_path / "new" / "f.json"))
    assert read_json(str(tmp_path / "new" / "f.json")) == {"x": [1, 2], "y": "z"}
    (d / ".hidden").write_text("")
    (d / "b.txt").write_text("")
    (d / "a.txt").write_text("")
    assert listdir_nohidden(str(d), sort=True) == ["a.txt", "b.txt"]


def test_read_image(tmp_path):
    p = tmp_path / "g.png"
    Image.fromarray(np.full((4, 6), 200, dtype=np.uint8), mode="L").save(p)
    img = read_image(str(p))
    assert img.mode == "RGB" and img.size == (6, 4) and img.getpixel((0, 0)) == (200, 200, 200)
    missing = str(tmp_path / "nope.jpg")
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        read_image(missing)


def test_checkpoint_save_resume(tmp_path):
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = save_checkpoint({"state_dict": model.state_dict(), "epoch": 3, "optimizer": opt.state_dict()},
                           str(tmp_path), is_best=True)
    assert path.endswith("model.pth.tar-3") and (tmp_path / "model-best.pth.tar").exists()
    assert load_checkpoint(path)["epoch"] == 3
    model2 = nn.Linear(2, 2)
    assert resume_from_checkpoint(str(tmp_path), model2) == 3
    assert torch.equal(model2.weight, model.weight)


def test_registry_still_exported():
    reg = Registry("X")

    @reg.register()
    class Foo:
        pass

    assert reg.get("Foo") is Foo
