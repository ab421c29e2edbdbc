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
    Registry,
    listdir_nohidden,
    load_checkpoint,
    load_pretrained_weights,
    mkdir_if_missing,
    read_image,
    read_json,
    reset_logger,
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


def test_load_checkpoint_and_pretrained_weights(tmp_path):
    """What a ported CoOp trainer calls: load_checkpoint in load_model, load_pretrained_weights for
    MODEL.INIT_WEIGHTS (names and shapes that match are copied, a DataParallel ``module.`` prefix dropped)."""
    source = nn.Linear(2, 2)
    path = str(tmp_path / "model.pth.tar-3")
    state = {"module.weight": source.weight.detach(), "bias": torch.zeros(5), "extra": torch.ones(1)}
    torch.save({"state_dict": state, "epoch": 3}, path)
    assert load_checkpoint(path)["epoch"] == 3
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        load_checkpoint(str(tmp_path / "absent"))
    target = nn.Linear(2, 2)
    bias = target.bias.detach().clone()
    matched, discarded = load_pretrained_weights(target, path)
    assert matched == ["weight"] and sorted(discarded) == ["bias", "extra"]
    assert torch.equal(target.weight, source.weight) and torch.equal(target.bias, bias)


def test_registry_still_exported():
    reg = Registry("X")

    @reg.register()
    class Foo:
        pass

    assert reg.get("Foo") is Foo
