"""Data files are data, never code (issue 17 items 1-4): restricted unpickling of the pickles other
projects ship, a json few-shot cache, literal --set values, weights-only checkpoint loading, temp
files that never follow a planted link."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from fake_datasets import class_folders, fedbn_domains

import datasets  # noqa: F401  (registers the datasets)
from dassl.data.datasets import DATASET_REGISTRY
from dassl.utils.atomic import atomic_write_text, remove_stale_temps
from datasets.fedbn_domains import read_pickle
from datasets.safe_pickle import load_data_pickle
from datasets.torchvision_format import read_cifar_batch
from federated.config import get_cfg
from federated.data import load_dataset
from federated.errors import DataError


class _WritesMarker:
    """Unpickling an instance calls ``builtins.exec`` with code that writes the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


class _SystemCall:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _malicious(tmp_path, name: str, payload_cls, wrap=lambda x: x) -> tuple[str, str]:
    marker = str(tmp_path / f"marker_{name}")
    path = tmp_path / name
    path.write_bytes(pickle.dumps(wrap(payload_cls(marker)), protocol=2))
    return str(path), marker


@pytest.mark.parametrize("payload", [_WritesMarker, _SystemCall])
def test_malicious_pickles_never_run(tmp_path, payload):
    # a FedBN split pickle, a CIFAR batch and a bare pickle: refused before anything is imported or called
    for name, reader in (("site_train.pkl", read_pickle), ("data_batch_1", read_cifar_batch),
                         ("bare.pkl", load_data_pickle)):
        path, marker = _malicious(tmp_path, name, payload, lambda x: ([x], [0]))
        with pytest.raises(DataError, match=r"refused: it holds a pickled (builtins\.exec|posix\.system|os\.system), "
                                            r"not plain data"):
            reader(path)
        assert not os.path.exists(marker), "the pickle ran code"


def test_data_pickles_load_lists_dicts_and_numpy_arrays(tmp_path):
    value = {"paths": np.array(["a.jpg", "b.jpg"]), "labels": np.array([3, 4], dtype=np.int64),
             "obj": np.array(["x", 1], dtype=object), "scalar": np.int64(7), "f": np.float32(0.5),
             "set": {1, 2}, "frozen": frozenset([3]), "bytes": b"\x00\xff", "ba": bytearray(b"ab"), "c": 1j,
             "nested": [(1, 2.5, None, True, "s")]}
    for protocol in (2, 4, 5):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(value, protocol=protocol))
        got = load_data_pickle(str(path))
        assert set(got) == set(value)
        for k in ("paths", "labels", "obj"):
            assert got[k].tolist() == value[k].tolist() and got[k].dtype == value[k].dtype
        assert got["scalar"] == 7 and got["scalar"].dtype == np.int64 and got["f"] == np.float32(0.5)
        assert got["set"] == {1, 2} and got["frozen"] == frozenset([3]) and got["bytes"] == b"\x00\xff"
        assert got["ba"] == bytearray(b"ab") and got["c"] == 1j and got["nested"] == [(1, 2.5, None, True, "s")]
    # a class, even a harmless one, is refused; so is a non-latin1 _codecs call
    (tmp_path / "od.pkl").write_bytes(pickle.dumps(__import__("collections").OrderedDict(a=1), protocol=2))
    with pytest.raises(DataError, match="collections.OrderedDict"):
        load_data_pickle(str(tmp_path / "od.pkl"))
    (tmp_path / "codec.pkl").write_bytes(b"\x80\x02c_codecs\nencode\nq\x00X\x01\x00\x00\x00aX\x05\x00\x00\x00rot13"
                                         b"q\x01\x86q\x02Rq\x03.")
    with pytest.raises(DataError, match="cannot read.*rot13"):
        load_data_pickle(str(tmp_path / "codec.pkl"))
    (tmp_path / "junk.pkl").write_bytes(b"\x00not a pickle")
    with pytest.raises(DataError, match="cannot read"):
        load_data_pickle(str(tmp_path / "junk.pkl"))


def test_wrong_shaped_data_pickles_are_clear_errors(tmp_path):
    for raw, match in ((5, "does not hold \\(paths, labels\\)"), ((1, 2), "does not hold \\(paths, labels\\) lists"),
                       ({"x": 1}, "does not hold")):
        (tmp_path / "w.pkl").write_bytes(pickle.dumps(raw))
        with pytest.raises(DataError, match=match):
            read_pickle(str(tmp_path / "w.pkl"))
    (tmp_path / "b").write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8)}))
    with pytest.raises(DataError, match="not a CIFAR python batch: no labels entry"):
        read_cifar_batch(str(tmp_path / "b"), ("data", "labels"))


def test_fedbn_dataset_with_a_malicious_pickle_is_refused(tmp_path):
    cls = DATASET_REGISTRY.get("PACS")
    fedbn_domains(str(tmp_path), cls.dataset_dir, list(cls.SITES), list(cls.CLASSNAMES), 2)
    path, marker = _malicious(tmp_path, "x", _WritesMarker)
    os.replace(path, tmp_path / cls.dataset_dir / f"{cls.SITES[0]}_train.pkl")
    cfg = get_cfg()
    cfg.DATASET.NAME, cfg.DATASET.ROOT = "PACS", str(tmp_path)
    with pytest.raises(DataError, match="refused: it holds a pickled builtins.exec"):
        load_dataset(cfg)
    assert not os.path.exists(marker)


def _dtd_cfg(root):
    cfg = get_cfg()
    cfg.DATASET.NAME, cfg.DATASET.ROOT = "DescribableTextures", str(root)
    cfg.DATASET.COOP_FEWSHOT, cfg.DATASET.NUM_SHOTS, cfg.DATASET.CHECK_NUM_CLASSES = True, 3, False
    return cfg


def test_fewshot_cache_is_json_and_a_planted_pickle_is_never_read(tmp_path):
    class_folders(str(tmp_path / "dtd" / "images"), ["banded", "bubbly"], per_class=20)
    folder = tmp_path / "dtd" / "split_fewshot"
    folder.mkdir(parents=True)
    # CoOp's cache name, holding code: ignored (never unpickled)
    marker = tmp_path / "marker"
    (folder / "shot_3-seed_1.pkl").write_bytes(pickle.dumps(_WritesMarker(str(marker))))
    ds = load_dataset(_dtd_cfg(tmp_path))
    assert not marker.exists()
    cache = json.loads((folder / "shot_3-seed_1.json").read_text())
    assert cache["format"] == 1 and cache["num_shots"] == 3 and len(cache["train"]) == 6
    assert [os.path.join(tmp_path / "dtd", e[0]) for e in cache["train"]] == [d.impath for d in ds.train_x]
    assert not os.path.isabs(cache["train"][0][0])  # relative to the dataset folder: the data root may move
    # the json is what a second load returns; a malformed one is a clear error
    cache["train"] = cache["train"][:2]
    (folder / "shot_3-seed_1.json").write_text(json.dumps(cache))
    assert len(load_dataset(_dtd_cfg(tmp_path)).train_x) == 2
    cache["train"][0] = ["a.jpg", "not a label", 0, "banded"]
    (folder / "shot_3-seed_1.json").write_text(json.dumps(cache))
    with pytest.raises(DataError, match="malformed entry.*delete it to rebuild it"):
        load_dataset(_dtd_cfg(tmp_path))
    (folder / "shot_3-seed_1.json").write_text("{")
    with pytest.raises(DataError, match="cannot read the few-shot cache"):
        load_dataset(_dtd_cfg(tmp_path))


def test_atomic_writes_never_follow_a_planted_symlink(tmp_path):
    from dassl.engine.trainer import atomic_torch_save

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    pid = os.getpid()
    # links at every name the former scheme used and at this process's mkstemp prefix
    for name in (f"checkpoint.pt.tmp.{pid}", f"results.json.tmp.{pid}", f".results.json.tmp-{pid}-x"):
        os.symlink(victim, out / name)
    atomic_torch_save({"a": torch.ones(2)}, str(out / "checkpoint.pt"))
    atomic_write_text(str(out / "results.json"), "{}")
    assert victim.read_text() == "precious"
    assert torch.load(out / "checkpoint.pt", weights_only=True)["a"].tolist() == [1.0, 1.0]
    assert (out / "results.json").read_text() == "{}" and not (out / "results.json").is_symlink()
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(out / "results.json").st_mode & 0o777 == 0o666 & ~umask  # as a plain open() would make it
    leftovers = sorted(p.name for p in out.iterdir() if "tmp" in p.name)
    assert leftovers == sorted([f"checkpoint.pt.tmp.{pid}", f"results.json.tmp.{pid}", f".results.json.tmp-{pid}-x"])


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    live = os.getpid()
    names = {f"checkpoint.pt.tmp.{dead_pid}": False, f"metrics.csv.tmp.{dead_pid}": False,
             f".results.json.tmp-{dead_pid}-abc": False, f"feat.npy.tmp.{dead_pid}.npy": False,
             f"checkpoint.pt.tmp.{live}": True, f".metrics.csv.tmp-{live}-xyz": True, "notes.tmp.txt": True,
             "results.json": True}
    for name in names:
        (tmp_path / name).write_text("x")
    os.symlink(tmp_path / "results.json", tmp_path / f".split.json.tmp-{dead_pid}-l")  # never a link
    removed = remove_stale_temps(str(tmp_path))
    assert sorted(os.path.basename(p) for p in removed) == sorted(n for n, keep in names.items() if not keep)
    for name, keep in names.items():
        assert (tmp_path / name).exists() == keep, name
    assert (tmp_path / f".split.json.tmp-{dead_pid}-l").is_symlink()


def test_dassl_load_checkpoint_is_weights_only(tmp_path):
    from dassl.utils import load_checkpoint

    marker = tmp_path / "marker"
    path = tmp_path / "model.pth.tar-1"
    torch.save({"state_dict": {}, "evil": _WritesMarker(str(marker))}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(str(path))
    assert not marker.exists()


def test_pretrain_set_values_are_literals_never_code(tmp_path):
    from tools.pretrain_toy_clip import parse_overrides

    assert parse_overrides(["lr=0.01", "size=(32, 32)", "layers=[1, 2]", "name='x'"]) == {
        "lr": 0.01, "size": (32, 32), "layers": [1, 2], "name": "x"}
    marker = tmp_path / "marker"
    with pytest.raises(SystemExit, match="--set lr: .* is not a literal"):
        parse_overrides([f"lr=__import__('os').system('touch {marker}')"])
    assert not marker.exists()


def test_flower_deploy_binds_the_superlink_to_localhost(tmp_path, monkeypatch):
    import argparse
    import subprocess

    from tools import flower_deploy

    started = []
    monkeypatch.setattr(flower_deploy.Deployment, "_start", lambda self, name, cmd: started.append(cmd))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, "", ""))
    deploy = flower_deploy.Deployment(argparse.Namespace(work_dir=str(tmp_path), insecure=True, num_nodes=1,
                                                         port=9190))
    deploy.start_superlink()
    (cmd,) = started
    assert cmd[0] == "flower-superlink" and cmd[cmd.index("--host") + 1] == "127.0.0.1"  # never 0.0.0.0
    assert deploy.link == "127.0.0.1:9190"
