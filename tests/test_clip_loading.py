"""clip.load_clip: names, every checkpoint format round trip, clear errors, offline behaviour. No downloads."""

from __future__ import annotations

import json
import logging
import os
import random
import time
import warnings
import zipfile

import open_clip
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import clip  # noqa: E402
from clip import names  # noqa: E402
from clip.loading import ClipWeightsUnavailable, load_clip, make_random_clip  # noqa: E402

RN_NAME = "fedtv-test-tiny-rn"
RN_CONFIG = {  # a tiny ModifiedResNet CLIP with QuickGELU and a Linear (biased) text projection
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1, "proj_bias": True},
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def rn_name(tmp_path_factory) -> str:
    """Register the second tiny test config with open_clip; return its name."""
    path = tmp_path_factory.mktemp("cfg") / f"{RN_NAME}.json"
    path.write_text(json.dumps(RN_CONFIG))
    open_clip.add_model_config(path)
    return RN_NAME


@pytest.fixture(scope="module")
def tiny_sd() -> dict[str, torch.Tensor]:
    return make_random_clip("tiny", seed=1).model.state_dict()


@pytest.fixture(scope="module")
def rn_sd(rn_name) -> dict[str, torch.Tensor]:
    return make_random_clip(rn_name, seed=1).model.state_dict()


class _Holder(nn.Module):
    def forward(self) -> int:
        return 0


def save_torchscript(sd: dict[str, torch.Tensor], path) -> None:
    """Write a real TorchScript zip whose state dict is ``sd`` plus OpenAI's extra entries (like OpenAI's .pt)."""
    root = _Holder()
    for key, value in sd.items():
        *mods, leaf = key.split(".")
        mod = root
        for m in mods:
            if m not in mod._modules:
                mod.add_module(m, _Holder())
            mod = mod._modules[m]
        if value.is_floating_point():
            mod.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
        else:
            mod.register_buffer(leaf, value.clone())
    for extra, v in (("input_resolution", 32), ("context_length", 32), ("vocab_size", 49408)):
        root.register_buffer(extra, torch.tensor(v))
    with warnings.catch_warnings():  # torch.jit.script is deprecated, but it is how OpenAI's files were made
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(root).save(str(path))


def assert_loaded_equal(loaded: clip.LoadedCLIP, sd: dict[str, torch.Tensor]) -> None:
    got = loaded.model.state_dict()
    assert set(got) == set(sd)
    for k, v in sd.items():
        ref = v.float() if v.is_floating_point() else v
        assert got[k].dtype == ref.dtype, k
        assert torch.equal(got[k], ref), k
    assert not loaded.model.training
    assert all(not p.requires_grad for p in loaded.model.parameters())


# ----------------------------------------------------------------------------------------------- names
@pytest.mark.parametrize(
    "given, canonical",
    [
        ("RN50", "RN50"),
        ("RN101", "RN101"),
        ("ViT-B/32", "ViT-B-32"),
        ("ViT-B/16", "ViT-B-16"),
        ("ViT-L/14", "ViT-L-14"),
        ("ViT-L/14@336px", "ViT-L-14-336"),
        ("ViT-B-16", "ViT-B-16"),
        ("vit-b/16", "ViT-B-16"),
        ("rn50", "RN50"),
        (" tiny ", "tiny"),
        ("ViT-B-32-quickgelu", "ViT-B-32-quickgelu"),
    ],
)
def test_normalize_backbone_name(given, canonical):
    assert clip.normalize_backbone_name(given) == canonical


def test_unknown_backbone_lists_supported_names():
    with pytest.raises(ValueError) as e:
        load_clip("ViT-B/99", weights="none")
    msg = str(e.value)
    for name in ("ViT-B/16", "RN50", "tiny", "ViT-B-32"):
        assert name in msg
    assert "Did you mean" in msg


def test_non_clip_open_clip_model_is_rejected():
    with pytest.raises(ValueError, match="not a plain CLIP"):
        clip.normalize_backbone_name("coca_ViT-B-32")


def test_paper_backbones_are_supported():
    supported = set(clip.supported_backbones())
    for name in clip.PAPER_BACKBONES:
        assert clip.normalize_backbone_name(name) in supported


# ----------------------------------------------------------------------------------------------- formats
def test_torchscript_archive_roundtrip(tmp_path, tiny_sd, rn_sd, rn_name):
    for name, sd in (("tiny", tiny_sd), (rn_name, rn_sd)):  # ViT and ModifiedResNet layouts
        path = tmp_path / f"{name}.pt"
        save_torchscript(sd, path)
        assert any(n.endswith("constants.pkl") for n in zipfile.ZipFile(path).namelist())
        assert clip.read_checkpoint(path).format == "torchscript"
        loaded = load_clip(name, str(path))
        assert_loaded_equal(loaded, sd)
        assert loaded.quick_gelu is True  # OpenAI archives hold QuickGELU weights
        assert loaded.weights_source == str(path)


@pytest.mark.parametrize("legacy", [False, True])
def test_openai_state_dict_roundtrip(tmp_path, tiny_sd, rn_sd, rn_name, legacy):
    for name, sd in (("tiny", tiny_sd), (rn_name, rn_sd)):
        path = tmp_path / f"{name}.pt"
        openai_sd = {**sd, "input_resolution": torch.tensor(32)}  # tolerated OpenAI extra
        torch.save(openai_sd, path, _use_new_zipfile_serialization=not legacy)
        assert clip.read_checkpoint(path).format == "state_dict"
        assert_loaded_equal(load_clip(name, str(path)), sd)


def test_open_clip_checkpoint_roundtrip(tmp_path, tiny_sd):
    path = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in tiny_sd.items()}}, path)
    assert clip.read_checkpoint(path).format == "open_clip_checkpoint"
    loaded = load_clip("tiny", str(path))
    assert_loaded_equal(loaded, tiny_sd)
    assert loaded.quick_gelu is False  # open_clip trains `tiny` with GELU


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_safetensors_roundtrip(tmp_path, tiny_sd, dtype):
    path = tmp_path / "w.safetensors"
    sd = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in tiny_sd.items()}
    save_file(sd, str(path))
    loaded = load_clip("tiny", str(path))
    assert_loaded_equal(loaded, sd)  # fp16 values cast exactly to fp32
    assert loaded.model.positional_embedding.dtype == torch.float32


def test_safetensors_metadata_sets_activation_and_normalisation(tmp_path, tiny_sd):
    path = tmp_path / "w.safetensors"
    meta = {"quick_gelu": "true", "mean": "[0.5, 0.5, 0.5]", "std": "[0.25, 0.25, 0.25]"}
    save_file({k: v.contiguous() for k, v in tiny_sd.items()}, str(path), metadata=meta)
    loaded = load_clip("tiny", str(path))
    assert loaded.quick_gelu is True
    assert isinstance(loaded.model.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    assert loaded.mean == (0.5, 0.5, 0.5) and loaded.std == (0.25, 0.25, 0.25)
    forced = load_clip("tiny", str(path), quick_gelu=False)
    assert forced.quick_gelu is False and isinstance(forced.model.transformer.resblocks[0].mlp.gelu, nn.GELU)


def test_quick_gelu_override_beats_config(tmp_path, rn_sd, rn_name):
    path = tmp_path / "rn.pt"
    torch.save(rn_sd, path)
    loaded = load_clip(rn_name, str(path), quick_gelu=False)  # the config says QuickGELU
    assert not isinstance(loaded.model.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    assert_loaded_equal(loaded, rn_sd)


def test_loaded_clip_fields(tmp_path, tiny_sd):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_sd.items()}, str(path))
    loaded = load_clip("tiny", str(path), device=torch.device("cpu"))
    assert isinstance(loaded.model, open_clip.CLIP)
    assert (loaded.name, loaded.image_size, loaded.context_length, loaded.embed_dim) == ("tiny", 32, 32, 64)
    assert loaded.mean == tuple(open_clip.OPENAI_DATASET_MEAN) and loaded.std == tuple(open_clip.OPENAI_DATASET_STD)
    tokens = loaded.tokenize(["a photo of a red triangle.", "a circle"])
    assert tokens.dtype == torch.long and tokens.shape == (2, 32)
    with torch.no_grad():
        feats = loaded.model.encode_image(torch.zeros(1, 3, 32, 32))
    assert feats.shape == (1, 64)


# ----------------------------------------------------------------------------------------------- errors
def test_checkpoint_for_another_architecture(tmp_path, tiny_sd, rn_name):
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_sd.items()}, str(path))
    with pytest.raises(ValueError) as e:
        load_clip(rn_name, str(path))
    msg = str(e.value)
    assert str(path) in msg and rn_name in msg
    assert "missing key" in msg and "visual.bn1.weight" in msg
    assert "unexpected key" in msg and "transformer.resblocks.1." in msg
    assert "positional_embedding: file (32, 64) vs model (16, 32)" in msg
    assert "It matches backbone(s): tiny" in msg


def test_shape_mismatch_and_extra_key(tmp_path, tiny_sd):
    bad = dict(tiny_sd)
    bad["positional_embedding"] = bad["positional_embedding"][:16].clone()
    bad["prompt_learner.ctx"] = torch.zeros(4, 64)
    path = tmp_path / "bad.pt"
    torch.save(bad, path)
    with pytest.raises(ValueError) as e:
        load_clip("tiny", str(path))
    msg = str(e.value)
    assert "shape mismatch" in msg and "positional_embedding: file (16, 64) vs model (32, 64)" in msg
    assert "prompt_learner.ctx" in msg and "'tiny'" in msg


@pytest.mark.parametrize(
    "content, match",
    [
        (random.Random(0).randbytes(2048), "not a PyTorch checkpoint"),
        (b"hello world\n" * 20, "not a PyTorch checkpoint"),
        (b"", "empty"),
    ],
    ids=["random-bytes", "text", "empty"],  # the same test ids in every process (pytest-xdist workers)
)
def test_garbage_files(tmp_path, content, match):
    path = tmp_path / "garbage.bin"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as e:
        load_clip("tiny", str(path))
    assert str(path) in str(e.value)


def test_non_torch_zip_and_pickled_module(tmp_path):
    zpath = tmp_path / "weights.pt"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("readme.txt", "not weights")
    with pytest.raises(ValueError, match="zip archive"):
        load_clip("tiny", str(zpath))
    mpath = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2), mpath)
    with pytest.raises(ValueError, match="pickled Python objects"):
        load_clip("tiny", str(mpath))


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_clip("tiny", str(tmp_path / "nope.safetensors"))
    with pytest.raises(ValueError, match="is a directory"):
        load_clip("tiny", str(tmp_path))


def test_unknown_tag_lists_known_tags():
    with pytest.raises(ValueError) as e:
        load_clip("ViT-B/32", "laion_nonsense")
    assert "openai" in str(e.value) and "laion2b_s34b_b79k" in str(e.value)


@pytest.mark.parametrize("backbone, weights", [("ViT-B/32", ""), ("RN50", "openai"), ("ViT-B/16", "OpenAI")])
def test_openai_offline_fails_fast_with_hint(tmp_path, backbone, weights):
    start = time.monotonic()
    with pytest.raises(ClipWeightsUnavailable) as e:
        load_clip(backbone, weights, cache_dir=str(tmp_path))
    assert time.monotonic() - start < 5
    msg = str(e.value)
    assert isinstance(e.value, RuntimeError)
    assert "--clip-weights PATH" in msg and "MODEL.BACKBONE.WEIGHTS PATH" in msg
    assert "open_clip_model.safetensors" in msg and "openaipublic" in msg  # hub cache file and OpenAI download
    assert f"{clip.normalize_backbone_name(backbone)}.pt" in msg


def test_pretrained_tag_found_in_hub_cache_offline(tmp_path, tiny_sd, monkeypatch):
    """A tag resolves through open_clip's registry and the Hugging Face cache layout, without network."""
    monkeypatch.setitem(
        open_clip.pretrained._PRETRAINED,
        "tiny",
        {"toy": {"hf_hub": "fedtv/tiny-toy/", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}},
    )
    repo = tmp_path / "models--fedtv--tiny-toy"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tiny_sd.items()}, str(snap / "open_clip_model.safetensors"))
    loaded = load_clip("tiny", "toy", cache_dir=str(tmp_path))
    assert_loaded_equal(loaded, tiny_sd)
    assert loaded.weights_source == "toy" and loaded.mean == (0.5, 0.5, 0.5)


def test_default_tiny_weights_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(names.DEFAULT_WEIGHTS, "tiny", str(tmp_path / "tiny_toyworld.safetensors"))
    with pytest.raises(ClipWeightsUnavailable, match="--clip-weights PATH") as e:
        load_clip("tiny")
    assert "tiny_toyworld.safetensors" in str(e.value)


@pytest.mark.skipif(
    not (names.PACKAGE_DIR / names.DEFAULT_WEIGHTS["tiny"]).is_file(), reason="toy-world weights not shipped yet"
)
def test_default_tiny_weights_load():
    loaded = load_clip("tiny")
    assert loaded.weights_source.endswith("tiny_toyworld.safetensors")
    assert all(torch.isfinite(p).all() for p in loaded.model.parameters())


# ----------------------------------------------------------------------------------------------- random
def test_none_logs_loud_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="fedtv.clip"):
        loaded = load_clip("tiny", "none")
    assert loaded.weights_source == "random"
    records = [r for r in caplog.records if r.name == "fedtv.clip" and r.levelno == logging.WARNING]
    assert len(records) == 1 and "RANDOM" in records[0].getMessage()
    assert "No pretrained weights loaded" not in caplog.text  # open_clip's own notice is filtered


def test_make_random_clip_is_seeded_and_leaves_global_rng(caplog):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with caplog.at_level(logging.INFO):
        a = make_random_clip("tiny", seed=0)
    assert torch.equal(torch.rand(3), expected)
    assert len([r for r in caplog.records if r.name == "fedtv.clip"]) == 1
    b = make_random_clip("tiny", seed=0)
    c = make_random_clip("tiny", seed=1)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["positional_embedding"], sc["positional_embedding"])
    assert a.weights_source == "random" and all(not p.requires_grad for p in a.model.parameters())
