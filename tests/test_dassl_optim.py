"""Tests for dassl.optim: optimisers and per-epoch learning rates."""
import math

import pytest
import torch
from torch import nn

from dassl.config import get_cfg_default
from dassl.optim import build_lr_scheduler, build_optimizer


def _optim_cfg(**kw):
    o = get_cfg_default().OPTIM
    for k, v in kw.items():
        setattr(o, k, v)
    return o


def _lrs(optim_cfg, n_epochs, n_groups=1):
    params = [{"params": [nn.Parameter(torch.zeros(1))]} for _ in range(n_groups)]
    opt = build_optimizer(params, optim_cfg)
    sched = build_lr_scheduler(opt, optim_cfg)
    out = []
    for _ in range(n_epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_optimizer_types_and_hyperparameters():
    p = [nn.Parameter(torch.zeros(3))]
    sgd = build_optimizer(p, _optim_cfg(NAME="sgd", LR=0.01, MOMENTUM=0.8, SGD_NESTEROV=True, WEIGHT_DECAY=0.0))
    assert isinstance(sgd, torch.optim.SGD)
    g = sgd.param_groups[0]
    assert (g["lr"], g["momentum"], g["nesterov"], g["dampening"]) == (0.01, 0.8, True, 0)
    adam = build_optimizer(p, _optim_cfg(NAME="adam", ADAM_BETA1=0.8, ADAM_EPS=1e-6))
    g = adam.param_groups[0]
    assert type(adam) is torch.optim.Adam and g["betas"] == (0.8, 0.999) and g["eps"] == 1e-6
    assert g["weight_decay"] == 5e-4 and g["amsgrad"] is False
    assert build_optimizer(p, _optim_cfg(NAME="amsgrad")).param_groups[0]["amsgrad"] is True
    assert isinstance(build_optimizer(p, _optim_cfg(NAME="adamw")), torch.optim.AdamW)
    rms = build_optimizer(p, _optim_cfg(NAME="rmsprop", RMSPROP_ALPHA=0.9))
    assert isinstance(rms, torch.optim.RMSprop) and rms.param_groups[0]["alpha"] == 0.9


def test_sgd_step_value():
    w = nn.Parameter(torch.tensor([1.0]))
    opt = build_optimizer([w], _optim_cfg(NAME="sgd", LR=0.1, WEIGHT_DECAY=0.0, MOMENTUM=0.0))
    (2.0 * w).sum().backward()  # grad = 2
    opt.step()
    assert w.item() == pytest.approx(0.8)


def test_unknown_optimizer_lists_names():
    with pytest.raises(ValueError, match="valid names: .*sgd.*adamw"):
        build_optimizer([nn.Parameter(torch.zeros(1))], _optim_cfg(NAME="lion"))


def test_module_uses_only_trainable_parameters():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4))
    model[0].requires_grad_(False)
    opt = build_optimizer(model, _optim_cfg())
    got = {id(p) for g in opt.param_groups for p in g["params"]}
    assert got == {id(p) for p in model[1].parameters()}
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model, _optim_cfg())
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer([], _optim_cfg())


def test_param_groups_and_staged_lr():
    model = nn.Module()
    model.backbone = nn.Linear(2, 2)
    model.head = nn.Linear(2, 1)
    groups = [{"params": list(model.head.parameters()), "lr": 0.5}]
    opt = build_optimizer(model, _optim_cfg(LR=0.1), param_groups=groups)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["lr"] == 0.5
    opt = build_optimizer(model, _optim_cfg(LR=0.1, STAGED_LR=True, NEW_LAYERS=("head",), BASE_LR_MULT=0.1))
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs == pytest.approx([0.01, 0.1])
    assert {id(p) for p in opt.param_groups[1]["params"]} == {id(p) for p in model.head.parameters()}


def test_single_step_default_never_decays_and_explicit_step():
    assert _lrs(_optim_cfg(LR=0.1, MAX_EPOCH=5), 5) == pytest.approx([0.1] * 5)
    got = _lrs(_optim_cfg(LR=0.1, STEPSIZE=(2,), GAMMA=0.5), 6)
    assert got == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])


def test_multi_step():
    got = _lrs(_optim_cfg(LR=1.0, LR_SCHEDULER="multi_step", STEPSIZE=(1, 3), GAMMA=0.1), 5)
    assert got == pytest.approx([1.0, 0.1, 0.1, 0.01, 0.01])


def test_cosine_closed_form():
    got = _lrs(_optim_cfg(LR=0.2, LR_SCHEDULER="cosine", MAX_EPOCH=4), 5)
    # 0.2 * (1 + cos(pi * e / 4)) / 2
    assert got == pytest.approx([0.2, 0.17071068, 0.1, 0.02928932, 0.0], abs=1e-7)


def test_coop_constant_warmup_cosine():
    o = _optim_cfg(NAME="sgd", LR=0.002, LR_SCHEDULER="cosine", MAX_EPOCH=50, WARMUP_EPOCH=1,
                   WARMUP_TYPE="constant", WARMUP_CONS_LR=1e-5)
    got = _lrs(o, 50, n_groups=2)
    assert got[0] == pytest.approx(1e-5)
    expected = [0.002 * (1 + math.cos(math.pi * (e - 1) / 50)) / 2 for e in range(1, 50)]
    assert got[1:] == pytest.approx(expected, rel=1e-6)


def test_linear_warmup_and_no_recount():
    o = _optim_cfg(LR=0.1, LR_SCHEDULER="cosine", MAX_EPOCH=4, WARMUP_EPOCH=2, WARMUP_TYPE="linear",
                   WARMUP_MIN_LR=1e-4)
    assert _lrs(o, 6) == pytest.approx([1e-4, 0.05, 0.1, 0.085355339, 0.05, 0.014644661], abs=1e-8)
    o.WARMUP_RECOUNT = False  # after warmup the cosine continues at its own epoch e
    assert _lrs(o, 5) == pytest.approx([1e-4, 0.05, 0.05, 0.014644661, 0.0], abs=1e-8)


def test_warmup_state_dict_round_trip(tmp_path):
    o = _optim_cfg(LR=0.1, LR_SCHEDULER="cosine", MAX_EPOCH=6, WARMUP_EPOCH=1, WARMUP_TYPE="constant")
    p = nn.Parameter(torch.zeros(1))
    opt = build_optimizer([p], o)
    sched = build_lr_scheduler(opt, o)
    for _ in range(3):
        opt.step()
        sched.step()
    torch.save({"s": sched.state_dict(), "o": opt.state_dict()}, tmp_path / "ck.pt")
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    p2 = nn.Parameter(torch.zeros(1))
    opt2 = build_optimizer([p2], o)
    sched2 = build_lr_scheduler(opt2, o)
    opt2.load_state_dict(ck["o"])
    sched2.load_state_dict(ck["s"])
    for _ in range(2):
        opt.step()
        sched.step()
        opt2.step()
        sched2.step()
        assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * (1 + math.cos(math.pi * 4 / 6)) / 2)


def test_scheduler_errors():
    p = nn.Parameter(torch.zeros(1))
    opt = build_optimizer([p], _optim_cfg())
    with pytest.raises(ValueError, match="valid names: single_step, multi_step, cosine"):
        build_lr_scheduler(opt, _optim_cfg(LR_SCHEDULER="poly"))
    with pytest.raises(ValueError, match="WARMUP_TYPE"):
        build_lr_scheduler(opt, _optim_cfg(WARMUP_EPOCH=1, WARMUP_TYPE="exp"))
