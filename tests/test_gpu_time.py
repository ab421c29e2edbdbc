"""tools/gpu_time.py: the GPU-time estimate of a hand-made run equals the hand-computed sum of its
operations' costs (text cost from token rows: shared prefix, trimmed, full-length); it grows with rounds,
clients and classes; batched clients cost less than sequential ones and a shared prefix less than dense
prompts; the published (reference) way never costs less than the fast path; every script's paper grid
and the bench's paper size get an estimate; prompt suffix lengths come from class names; a bad costs
file is a clear error; the table scripts' integer axes refuse non-integers."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re

import pytest

from datasets.sizes import dataset_size, suffix_length
from tools.experiments import ExperimentError
from tools.gpu_time import (
    METHOD_COSTS,
    MODES,
    REPO,
    CostsError,
    EvalSet,
    RunShape,
    bench_paper_shape,
    estimate,
    estimate_runs,
    load_costs,
    load_script,
    script_paths,
    shape_from_argv,
    text_rows,
)
from tools.gpu_time import main as gpu_time_main

#: A costs file with round numbers, so that the test can add the operations up by hand.
COSTS = {
    "device": "test GPU",
    "text_fwd_bwd_ms_by_token_rows": {"bf16": [[50, 20.0], [1000, 39.0]], "fp32": [[50, 40.0], [1000, 97.0]]},
    "image_fwd_ms_per_32": {"bf16": 8.0, "fp32": 32.0},
    "forward_only_fraction": 0.25,
    "image_fwd_bwd_factor": 3.0,
    "text_weight_grad_factor": 1.5,
    "step_overhead_ms": 1.0,
    "backbone_scale": {"ViT-B/16": {"text": 1.0, "image": 1.0}},
    "source": {},
}


@pytest.fixture
def costs(tmp_path):
    path = tmp_path / "costs.json"
    path.write_text(json.dumps(COSTS))
    return load_costs(str(path))


def tiny_shape(method: str = "PromptFL", **changes) -> RunShape:
    """2 clients of 20 images, batch 10, 10 classes, 2 rounds (round 2 samples 1 client), 1 local epoch;
    both rounds evaluate two test sets of 50 images of 10 classes; 2 cached views; prompts of 4 context
    tokens and a 3-token suffix (name, '.', EOS)."""
    shape = RunShape(method=method, backbone="ViT-B/16", rounds=2, epochs=1, batch=10, classes=10,
                     client_images=[20.0, 20.0], sampled=[2, 1], eval_rounds=2,
                     eval_sets=[EvalSet(1, 50.0, 10), EvalSet(1, 50.0, 10)], zero_shot=[], cache_views=2,
                     batched=False, n_ctx=4, suffix=3)
    return dataclasses.replace(shape, **changes)


def bf16(rows: float) -> float:
    """The test file's bf16 text cost: 20 ms up to 50 token rows, then linear to 39 ms at 1000."""
    return 20.0 if rows <= 50 else 20.0 + 19.0 * (rows - 50) / 950


def test_token_rows_by_prompt_layout():
    shape = tiny_shape()
    # shared prefix: G (1 + n_ctx) + G C S; reference: C prompts x 77 tokens
    assert text_rows(shape, "fast", 10) == 1 * 5 + 10 * 3 == 35
    assert text_rows(shape, "fast", 10, context_sets=4) == 4 * 5 + 4 * 10 * 3 == 140
    assert text_rows(shape, "reference", 10) == 10 * 77
    # trimmed (FedOTP: 2 prompts per class): every prompt 1 + n_ctx + S tokens
    assert text_rows(tiny_shape("FedOTP"), "fast", 10) == 2 * 10 * (1 + 4 + 3)
    # CoCoOp: one context per image: 10 prefixes of 1 + 4 tokens, 10 x 10 class suffixes of 3 tokens;
    # hand-crafted prompts (FLoRA): 77 tokens also on the fast path
    assert text_rows(tiny_shape("FedCoCoOp"), "fast", 10, images=10) == 10 * (1 + 4) + 10 * 10 * 3
    assert text_rows(tiny_shape("FLoRA"), "fast", 10) == 10 * 77


def test_hand_computed_estimate(costs):
    shape = tiny_shape()
    steps = 2 * 2 + 2  # round 1: 2 clients x ceil(20 / 10) steps; round 2: one client, 2 steps
    # fast: text pass of 5 + 10 x 3 = 35 token rows (bf16 floor: 20 ms) + overhead; evaluation: text
    # forward (1/4) per set
    fast = estimate(shape, costs, "fast")
    assert fast.train == pytest.approx(steps * (20.0 + 1.0) / 1000)
    assert fast.evaluate == pytest.approx(2 * 2 * 0.25 * 20.0 / 1000)
    # cache: 2 views of the 40 training images + the 100 test images, bf16 image tower (8 ms / 32 images)
    assert fast.cache == pytest.approx((2 * 40 + 100) * 8.0 / 32 / 1000)
    # reference: fp32 text over 10 x 77 = 770 token rows (40 + 57 x 720 / 950 ms) + fp32 image tower on the
    # batch (10 x 32 / 32 ms) + overhead per step; evaluation re-encodes the 50 images of each set
    ref_text = 40.0 + 57.0 * (770 - 50) / 950
    ref = estimate(shape, costs, "reference")
    assert ref.cache == 0
    assert ref.train == pytest.approx(steps * (ref_text + 10.0 + 1.0) / 1000)
    assert ref.evaluate == pytest.approx(2 * 2 * (0.25 * ref_text + 50.0) / 1000)
    assert ref.total == pytest.approx(ref.train + ref.evaluate)
    # FedPGP: fast = one shared-prefix pass of 2 context sets: 2 x 5 + 2 x 10 x 3 = 70 rows (20.4 ms);
    # reference = 4 passes of C = 10 full-length prompts
    pgp = tiny_shape("FedPGP")
    assert estimate(pgp, costs, "fast").train == pytest.approx(steps * (bf16(70) + 1.0) / 1000)
    assert bf16(70) == pytest.approx(20.4)
    assert estimate(pgp, costs, "reference").train == pytest.approx(steps * (4 * ref_text + 10.0 + 1.0) / 1000)
    # batched clients: round 1 = 2 steps of ONE pass over both clients' prompts (2 x 5 + 2 x 30 = 70 rows) and
    # one overhead; round 2 = 2 single-client steps (35 rows)
    batched = estimate(shape, costs, "fast", batch_clients=True)
    assert batched.train == pytest.approx((2 * (bf16(70) + 1.0) + 2 * 21.0) / 1000)
    assert estimate(dataclasses.replace(shape, batched=True), costs, "fast").train == pytest.approx(batched.train)
    # FedPGP batched: 4 context sets in the step: 4 x 5 + 4 x 30 = 140 rows
    pgp_batched = estimate(pgp, costs, "fast", batch_clients=True)
    assert pgp_batched.train == pytest.approx((2 * (bf16(140) + 1.0) + 2 * (bf16(70) + 1.0)) / 1000)
    # a trimmed learner (FedOTP, 2 prompts per class): 160 rows of 8 tokens per client step; batched, round 1
    # = 2 steps of one pass over both clients (320 rows), round 2 = 2 single-client steps
    otp = estimate(tiny_shape("FedOTP"), costs, "fast", batch_clients=False)
    assert otp.train == pytest.approx(steps * (bf16(160) + 1.0) / 1000)
    otp_batched = estimate(tiny_shape("FedOTP"), costs, "fast", batch_clients=True)
    assert otp_batched.train == pytest.approx((2 * (bf16(320) + 1.0) + 2 * (bf16(160) + 1.0)) / 1000)
    # a personal model per client: base / novel style sets are evaluated by each of the 2 clients
    per = tiny_shape("FedPGP", eval_sets=[EvalSet(2, 50.0, 10)])
    assert estimate(per, costs, "reference").evaluate == pytest.approx(2 * 2 * (0.25 * ref_text + 50.0) / 1000)
    # extrapolation above the last measured point follows the last slope; the floor below the first
    assert costs.text(1950, "bf16", "ViT-B/16") == pytest.approx(58.0)
    assert costs.text(5, "bf16", "ViT-B/16") == pytest.approx(20.0)


def test_per_example_gradients_cost_a_backward_per_example(costs):
    """DP-FPL (per-example clipping): the 35-row text pass forward once (1/4 of 20 ms) and the backward of
    10 cotangents over 350 rows (bf16(350) = 20 + 19 x 300 / 950 = 26 ms, minus its forward 6.5 ms)."""
    shape = tiny_shape("DPFPL")
    steps = 2 * 2 + 2
    per_step = 0.25 * 20.0 + (26.0 - 0.25 * 26.0) + 1.0
    assert estimate(shape, costs, "fast").train == pytest.approx(steps * per_step / 1000)
    assert METHOD_COSTS["DPFPL"].per_example and not METHOD_COSTS["DPFPL"].batchable


def test_precision_follows_the_config(costs):
    shape = tiny_shape("FedPGP", classes=40)  # 2 x 5 + 2 x 40 x 3 = 250 token rows per client step
    steps = 2 * 2 + 2
    # PREC fp32: the fp32 text costs (40 + 57 x 200 / 950 ms) and an fp32 cache (32 ms per 32 images)
    fp32 = estimate(shape, costs, "fast", precision="fp32")
    assert fp32.train == pytest.approx(steps * (40.0 + 57.0 * 200 / 950 + 1.0) / 1000)
    assert fp32.cache == pytest.approx((2 * 40 + 100) * 32.0 / 32 / 1000)
    assert estimate(dataclasses.replace(shape, precision="fp32"), costs, "fast").train == pytest.approx(fp32.train)
    # fp16 runs at bf16 speed, but its gradient scaling keeps the clients one after another
    fp16 = estimate(shape, costs, "fast", batch_clients=True, precision="fp16")
    assert fp16.train == pytest.approx(estimate(shape, costs, "fast", batch_clients=False).train)
    assert fp16.train > estimate(shape, costs, "fast", batch_clients=True).train
    # the reference mode is fp32 whatever PREC says
    assert estimate(shape, costs, "reference", precision="bf16") == estimate(shape, costs, "reference")


@pytest.mark.parametrize("method", ["PromptFL", "CoOp", "KgCoOp", "FedCoCoOp", "FedPGP", "FedTV", "FedLC"])
def test_batched_clients_cost_less_than_sequential(method):
    costs = load_costs()
    shape = tiny_shape(method, classes=50, client_images=[80.0] * 10, sampled=[10, 10], n_ctx=16, suffix=6,
                       batch=32)
    assert METHOD_COSTS[method].batchable
    batched = estimate(shape, costs, "fast", batch_clients=True)
    sequential = estimate(shape, costs, "fast", batch_clients=False)
    assert batched.train < sequential.train
    assert (batched.cache, batched.evaluate) == (sequential.cache, sequential.evaluate)
    # a method batching does not support costs the same either way
    lora = dataclasses.replace(shape, method="FLoRA")
    assert estimate(lora, costs, "fast", True).train == estimate(lora, costs, "fast", False).train


@pytest.mark.parametrize("batch_clients", [False, True])
def test_shared_prefix_is_cheaper_than_dense_prompts(monkeypatch, batch_clients):
    costs = load_costs()
    shape = tiny_shape("FedTV", classes=100, client_images=[160.0] * 10, sampled=[10, 10], n_ctx=16, suffix=6,
                       batch=32)
    shared = estimate(shape, costs, "fast", batch_clients).train
    rows = {}
    for layout in ("shared", "trimmed", "full"):
        monkeypatch.setitem(METHOD_COSTS, "FedTV", dataclasses.replace(METHOD_COSTS["FedTV"], prompt=layout))
        rows[layout] = text_rows(shape, "fast", 100, context_sets=2)
        if layout != "shared":
            assert estimate(shape, costs, "fast", batch_clients).train > shared, layout
    # 2 x 17 + 2 x 100 x 6 < 2 x 100 x 23 < 2 x 100 x 77
    assert rows == {"shared": 2 * 17 + 1200, "trimmed": 200 * 23, "full": 200 * 77}


def test_suffix_length_from_class_names():
    # "red circle." is red / circle / . in CLIP's BPE, + EOS; the longest name sets every class's suffix
    assert suffix_length(["red circle"]) == 4
    assert suffix_length(["cat", "red_circle"]) == 4
    assert suffix_length(["cat"]) == 3
    pacs = dataset_size("PACS")  # class names in the code: computed
    assert pacs.suffix_exact and pacs.suffix == suffix_length(
        ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"])
    cars = dataset_size("StanfordCars")  # names in the files: the stated assumption (14 + '.' + EOS)
    assert not cars.suffix_exact and cars.suffix == 16


def test_bench_paper_size_per_round(capsys):
    costs = load_costs()
    shape = bench_paper_shape("FedTV")
    # 10 clients x 16 shots x 50 base classes / 10 = 80 images: 3 steps of 32 per epoch, 2 epochs
    assert shape.client_images == [80.0] * 10 and shape.steps(80.0) == 6
    assert (shape.n_ctx, shape.classes, shape.batch) == (16, 50, 32)
    rows = 20 * 17 + 20 * 50 * shape.suffix  # 10 clients x 2 context sets in one vmapped step
    fast = estimate(shape, costs, "fast")
    assert fast.train == pytest.approx(6 * (costs.text(rows, "bf16", "ViT-B/16") + 2.0) / 1000)
    ref = estimate(shape, costs, "reference")
    step = 4 * costs.text(50 * 77, "fp32", "ViT-B/16") + 31.0 + 2.0  # four text passes, fp32 image tower
    assert ref.train == pytest.approx(60 * step / 1000)
    assert fast.evaluate == fast.cache == ref.evaluate == 0
    assert gpu_time_main(["--bench-paper"]) == 0
    out = capsys.readouterr().out
    table = [ln for ln in out.splitlines() if ln.startswith("| Prompt") or ln.startswith("| Fed")]
    assert [ln.split(" | ")[0] for ln in table] == ["| PromptFL", "| FedPGP", "| FedTV"]
    for ln in table:
        assert float(ln.split(" | ")[-1].rstrip(" x|")) >= 10


def test_shape_of_a_paper_run_follows_its_flags():
    exp = load_script(os.path.join(REPO, "scripts", "table1_base2novel.py"))
    (run,) = exp.runs(exp.parser().parse_args(["--datasets", "dtd", "--methods", "FedPGP", "--seeds", "1"]))
    shape = shape_from_argv(run.argv)
    # DTD: 47 classes, 24 base; 10 clients, 16 shots each on its share of the base classes; batch 16
    assert shape.classes == math.ceil(47 / 2) == 24
    assert shape.client_images == [pytest.approx(16 * 24 / 10)] * 10
    assert (shape.rounds, shape.epochs, shape.batch, shape.eval_rounds) == (25, 2, 16, 25)
    assert shape.sampled == [10] * 25
    # local sets (one model each) + base / novel evaluated by each client (FedPGP is personalised)
    assert [s.models for s in shape.eval_sets] == [1] * 10 + [10, 10]
    # FedPGP's 16 context tokens; DTD's names are read from its files: the assumed 3-token name + '.' + EOS
    assert (shape.n_ctx, shape.suffix, shape.precision) == (16, 5, "fp32")  # FedPGP's config: PREC fp32
    assert any("DescribableTextures: prompt suffix of 5 tokens assumed" in n for n in shape.notes)
    assert sum(s.images for s in shape.eval_sets[:10]) == pytest.approx(1692 * 24 / 47)
    exp5 = load_script(os.path.join(REPO, "scripts", "table5_cifar_dirichlet.py"))
    (run5,) = exp5.runs(exp5.parser().parse_args(["--datasets", "cifar10", "--methods", "PromptFL", "--seeds", "1"]))
    shape5 = shape_from_argv(run5.argv)
    assert shape5.sampled == [100] + [10] * 149 and shape5.eval_rounds == 15  # every 10th round of 150
    assert shape5.client_images == [pytest.approx(500.0)] * 100


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["PromptFL", "FedPGP", "FLoRA", "FedMaPLe"])
def test_more_rounds_clients_classes_cost_more(costs, mode, method):
    base = tiny_shape(method)
    more = {
        "rounds": dataclasses.replace(base, rounds=3, sampled=[2, 1, 1], eval_rounds=3),
        "clients": dataclasses.replace(base, client_images=[20.0] * 3, sampled=[3, 1]),
        "classes": dataclasses.replace(base, classes=40, eval_sets=[EvalSet(1, 50.0, 40)] * 2),
    }
    for batch_clients in (False, True):
        t0 = estimate(base, costs, mode, batch_clients).total
        for what, shape in more.items():
            assert estimate(shape, costs, mode, batch_clients).total > t0, (what, batch_clients)


def test_every_script_grid_is_estimated_and_reference_never_cheaper():
    costs = load_costs()
    for path in script_paths():
        exp = load_script(path)
        runs = exp.runs(exp.parser().parse_args([]))
        shapes = [shape_from_argv(r.argv) for r in runs]
        for batch_clients in (None, False):
            grid = estimate_runs(runs, costs, batch_clients, shapes=shapes)
            assert len(grid.rows) == len(runs)
            for key, est in grid.rows:
                # training + evaluation never cost more than the published way; the one-time feature cache
                # can (a short fp32 run over many images: flora_cost's FedFFT on CIFAR-10 with 8 views)
                fast = est["fast"]
                assert 0 < fast.train + fast.evaluate <= est["reference"].total < math.inf, (path, key)
            assert 0 < grid.hours["fast"] < grid.hours["reference"]
        # the fast total counts each feature cache once: at most the sum of the runs' own totals
        assert grid.hours["fast"] <= sum(e["fast"].total for _, e in grid.rows) / 3600 + 1e-9


def test_bad_costs_file_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(CostsError, match="cannot read"):
        load_costs(str(tmp_path / "absent.json"))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(CostsError, match="not valid JSON"):
        load_costs(str(tmp_path / "broken.json"))
    for change, message in (({"image_fwd_ms_per_32": None}, "missing key 'image_fwd_ms_per_32'"),
                            ({"forward_only_fraction": -1}, "forward_only_fraction must be a positive number"),
                            ({"text_fwd_bwd_ms_by_token_rows": {"bf16": [[10, 20]]}},
                             "text_fwd_bwd_ms_by_token_rows.fp32"),
                            ({"backbone_scale": {"ViT-B/16": {"text": 1}}}, "backbone_scale.ViT-B/16.image"),
                            ({"text_fwd_bwd_ms_by_token_rows": None, "text_fwd_bwd_ms": {"bf16": [[10, 20]]}},
                             "'text_fwd_bwd_ms' (per prompt count) is the old format")):
        raw = {k: v for k, v in {**COSTS, **change}.items() if v is not None}
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(raw))
        with pytest.raises(CostsError, match=re.escape(message)):
            load_costs(str(path))
    # a backbone the file has no costs for
    path = tmp_path / "costs.json"
    path.write_text(json.dumps(COSTS))
    with pytest.raises(CostsError, match="no costs for backbone 'ViT-B/32'"):
        estimate(tiny_shape(backbone="ViT-B/32"), load_costs(str(path)), "fast")
    # through a script: exit status 2 and the message, nothing run
    exp = load_script(script_paths()[0])
    assert exp.cli(["--estimate", "--costs", str(tmp_path / "broken.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_script_estimate_prints_every_run_and_the_totals(capsys):
    exp = load_script([p for p in script_paths() if p.endswith("table1_base2novel.py")][0])
    assert exp.cli(["--estimate", "--datasets", "dtd", "oxford_pets", "--methods", "PromptFL", "FedPGP",
                    "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("| dtd") or ln.startswith("| oxford_pets")]
    assert len(rows) == 4 and "total over 4 runs" in out and "not a measurement" in out
    assert exp.cli(["--estimate", "--toy"]) == 2  # the toy world has no image counts: said, not a traceback
    assert "ToyWorld" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--shots", "abc"], "--shots: 'abc' is not an integer >= 1"),
    (["--shots", "0", "x"], "--shots: '0', 'x' are not integers >= 1"),
    (["--ranks", "1.5"], "--ranks: '1.5' is not an integer"),
    (["--seeds", "one"], "--seeds: 'one' is not an integer >= 0"),
])
def test_integer_axes_refuse_other_values(flags, message, capsys):
    exp = load_script([p for p in script_paths() if p.endswith("table11_fedpgp_rank_shots.py")][0])
    with pytest.raises(ExperimentError, match=message.replace(".", r"\.")):
        exp.runs(exp.parser().parse_args(flags))
    assert exp.cli([*flags, "--dry-run"]) == 2
    assert message in capsys.readouterr().err
    assert len(exp.runs(exp.parser().parse_args(["--shots", "2", "--ranks", "4", "--seeds", "0"]))) == 4


def test_the_documented_gpu_time_table_is_the_generated_one():
    """docs/REPRODUCING.md carries `python -m tools.gpu_time`'s table: it must not go stale when the
    scripts, the cost model or bench/gpu_costs.json change (regenerate it and paste it)."""
    from tools.gpu_time import scripts_table

    generated = [ln for ln in scripts_table(load_costs()).splitlines() if ln.startswith("| ")]
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                           "REPRODUCING.md")) as f:
        documented = [ln for ln in f.read().splitlines() if ln.startswith("| `scripts/") or
                      ln.startswith("| **all tables**")]
    assert documented == [ln for ln in generated if ln.startswith(("| `scripts/", "| **all tables**"))]
