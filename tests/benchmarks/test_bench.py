"""The benchmark suite's plumbing on tiny sizes: it runs, writes well-formed CSV / JSON /
markdown / PNG, counts bytes as bench/harness/traffic.py says, and its SAM baseline is spec
section 3. Timings themselves are not checked here (see `python -m bench`)."""
import csv
import io
import json
import os

import pytest
import torch

from bench import run
from bench.baselines import authors
from bench.baselines.sam import SAM
from bench.harness import backend_choice, traffic
from bench.harness.config import QualityProfile, profile, quality_profile, sweep_set
from bench.harness.progress import Progress
from bench.harness.results import AUTHORS, COLUMNS, add_ratios
from bench.harness.timing import Budget, measure
from bench.methods import (AUTHORS_TRAIN_METHODS, FIRST_ORDER_TRAIN_METHODS, HESSIAN_POWER,
                           QUALITY_METHODS, TRAIN_FD_METHODS, TRAIN_METHODS)
from bench.output import summary, tables
from bench.suites import quality
from bench.suites import train as train_suite
from bench.suites import train_worker
from bench.suites.ops import OP_NAMES
from bench.suites.step import cases, materialize, run_set, seed_sassha_state
from bench.workloads import digits, shapes
from bench.workloads.models import GPT, GPTConfig

CPU = torch.device("cpu")


# -- traffic model ----------------------------------------------------------------------

def test_traffic_counts_each_tensor_once_per_pass():
    assert traffic.bytes_per_element("adamw") == 7 * 4          # read p g m v, write p m v
    assert traffic.bytes_per_element("copy") == 2 * 4
    # norm(g1) | p, g1 -> p, e | p, e, g2, m, d -> p, m
    assert traffic.bytes_per_element("sassha") == (1 + 4 + 7) * 4
    assert traffic.bytes_per_element("sam_adamw") == (1 + 4 + 8) * 4
    assert traffic.traffic_bytes("hessian_ema", 1000) == 12 * 1000


def test_traffic_uses_fp32_state_only_where_the_method_keeps_it():
    # SASSHA in bf16: p, g, e, h are 2 bytes, m and D stay 4 bytes.
    assert traffic.bytes_per_element("sassha", torch.bfloat16) == 1 * 2 + 4 * 2 + (3 * 2 + 2 * 4) + (2 + 4)
    # torch AdamW keeps its moments in the parameter's dtype.
    assert traffic.bytes_per_element("adamw", torch.float16) == 7 * 2


def test_traffic_rejects_unknown_methods():
    with pytest.raises(ValueError, match="no traffic model"):
        traffic.bytes_per_element("lion")


# -- parameter sets ---------------------------------------------------------------------

def test_model_shaped_sets_have_the_models_sizes():
    by_name = {s.name: s for s in shapes.named_sets(gpt2_layers=12)}
    assert (by_name["resnet50"].numel, by_name["resnet50"].tensors) == (25_557_032, 161)
    assert (by_name["wide-resnet50-2"].numel, by_name["wide-resnet50-2"].tensors) == (68_883_240, 161)
    assert (by_name["gpt2-small"].numel, by_name["gpt2-small"].tensors) == (124_439_808, 148)
    sweep = sweep_set(1_000_000)
    assert sweep.tensors == 161 and abs(sweep.numel - 1_000_000) < 200


# -- SAM baseline against spec section 3, by hand -----------------------------------------

def _sam_problem(adaptive):
    p = torch.tensor([1.0, 2.0], requires_grad=True)
    sam = SAM([p], torch.optim.SGD, rho=0.5, adaptive=adaptive, lr=0.1)
    p.grad = torch.tensor([3.0, 4.0])
    return p, sam


def test_sam_perturbs_by_rho_times_normalized_gradient_then_steps_from_x():
    p, sam = _sam_problem(adaptive=False)
    sam.perturb()
    # ||g1|| = 5: e = 0.5 * [3, 4] / 5 = [0.3, 0.4]
    assert torch.allclose(p.detach(), torch.tensor([1.3, 2.4]))
    assert p.grad is None
    p.grad = torch.tensor([1.0, -1.0])  # g2 at x + e
    sam.step()
    # back to x, then SGD with g2: [1, 2] - 0.1 * [1, -1]
    assert torch.allclose(p.detach(), torch.tensor([0.9, 2.1]))


def test_adaptive_sam_scales_by_p_squared_and_uses_the_weighted_norm():
    p, sam = _sam_problem(adaptive=True)
    sam.perturb()
    norm = (1.0 * 3.0) ** 2 + (2.0 * 4.0) ** 2  # || |p| * g1 ||^2 = 73
    e = torch.tensor([3.0 * 1.0, 4.0 * 4.0]) * 0.5 / (norm ** 0.5 + 1e-12)
    assert torch.allclose(p.detach(), torch.tensor([1.0, 2.0]) + e)
    p.grad = torch.tensor([1.0, -1.0])
    sam.step()
    assert torch.allclose(p.detach(), torch.tensor([0.9, 2.1]))


def test_sam_norm_spans_groups_each_with_its_rho():
    a = torch.tensor([0.0], requires_grad=True)
    b = torch.tensor([0.0], requires_grad=True)
    sam = SAM([{"params": [a], "rho": 1.0}, {"params": [b], "rho": 2.0}], torch.optim.SGD, lr=0.1)
    a.grad, b.grad = torch.tensor([3.0]), torch.tensor([4.0])
    sam.perturb()
    assert torch.allclose(a.detach(), torch.tensor([0.6])) and torch.allclose(b.detach(), torch.tensor([1.6]))


# -- harness ----------------------------------------------------------------------------

def test_measure_warms_up_then_times_the_requested_repetitions():
    calls = []
    budget = Budget(warmup=2, min_reps=3, max_reps=3, target_s=0.0, min_rep_s=0.0)
    timing = measure(lambda: calls.append(1), CPU, budget)
    assert timing.reps == 3 and len(calls) == 2 + 3 * timing.calls_per_rep
    assert timing.min_s <= timing.median_s <= timing.max_s


def test_sassha_step_case_times_a_non_hessian_step_that_updates():
    param_set = sweep_set(2_000)
    tensors = materialize(param_set, CPU, torch.float32)
    case = next(c for c in cases(["reference"]) if c.method == "sassha")
    before = [p.detach().clone() for p in tensors.params]
    iteration = case.build(tensors, CPU)
    # A due Hessian would raise here: the gradients carry no graph to differentiate.
    iteration()
    iteration()
    assert any(not torch.equal(b, p) for b, p in zip(before, tensors.params))


def test_seeded_state_makes_the_next_hessian_never_due():
    from sassha_fast import SASSHA
    p = torch.zeros(3, requires_grad=True)
    opt = SASSHA([p], lazy_hessian=2 ** 62)
    seed_sassha_state(opt)
    assert not opt.hessian_due and opt.state[p]["exp_hessian_diag"].min() > 0


def test_progress_writes_a_line_per_item_when_not_a_terminal():
    stream = io.StringIO()
    progress = Progress(2, stream=stream)
    progress.show("first")
    progress.advance()
    progress.show("second")
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("0/2 0m00s first") and "1/2" in lines[1]


def test_table_columns_line_up():
    rows = [dict(suite="step", workload="w", params=1000, tensors=3, method=m, backend="torch",
                 median_ms=t, min_ms=t, max_ms=t, reps=3, bytes=10, gbps=1.0)
            for m, t in (("adamw-fused", 2.0), ("sassha-long-name", 3.0))]
    add_ratios(rows)
    assert rows[1]["vs_baseline"] == pytest.approx(1.5)
    lines = tables.text("step", rows).splitlines()[1:]
    assert len({len(line) for line in lines}) == 1
    assert "1.50x" in lines[-1]


def _step_row(backend, method, ms, gbps, workload="wide-resnet50-2"):
    return dict(suite="step", workload=workload, params=68_883_240, tensors=161, method=method,
                backend=backend, median_ms=ms, gbps=gbps)


def test_issue3_summary_judges_the_cpu_backend_against_its_targets():
    rows = [_step_row("torch", "adamw-fused", 100.0, 20.0),
            _step_row("reference", "sassha", 1000.0, 3.0),
            _step_row("cpu", "sassha", 150.0, 19.0)]
    lines = summary.issue3(rows, {})
    assert "95% of fused AdamW's GB/s" in lines[-1] and "6.7x faster" in lines[-1]
    assert "MISSES" not in lines[-1]
    rows[-1] = _step_row("cpu", "sassha", 300.0, 9.0)
    assert summary.issue3(rows, {})[-1].count("MISSES") == 2


def test_issue3_summary_says_why_a_backend_is_missing():
    rows = [_step_row("torch", "adamw-fused", 100.0, 20.0),
            _step_row("reference", "sassha", 1000.0, 3.0)]
    lines = summary.issue3(rows, {"cpu": "cannot import sassha_fast.backends.cpu"})
    assert any("cpu: not measured in this run (cannot import" in line for line in lines)


# -- whole runs -------------------------------------------------------------------------

def _read_csv(path):
    with open(path) as handle:
        body = [line for line in handle if not line.startswith("#")]
    return list(csv.DictReader(body))


def test_smoke_run_writes_csv_json_markdown_and_png(tmp_path):
    assert run.main(["--smoke", "--suite", "step,ops", "--out", str(tmp_path)]) == 0
    rows = _read_csv(tmp_path / "results.csv")
    assert list(rows[0]) == list(COLUMNS)
    backends = backend_choice.usable(CPU)
    step = [r for r in rows if r["suite"] == "step"]
    methods = {(r["method"], r["backend"]) for r in step}
    expected = {"adamw-forloop", "adamw-foreach", "adamw-fused", "sam-adamw", "sam-sgd"}
    assert expected <= {m for m, _ in methods}
    assert {("sassha", b) for b in backends} <= methods
    assert {("sassha-hessian-ema", b) for b in backends} <= methods
    # compiled rows on the first set only
    assert {(r["backend"], r["workload"]) for r in step if r["method"] == "sassha-compiled"} \
        == {(b, step[0]["workload"]) for b in backends}
    payload_summary = json.loads((tmp_path / "results.json").read_text())["summary"]
    assert any(line.startswith("issue 28: compiled / eager SASSHA step") for line in payload_summary)
    ops = [r for r in rows if r["suite"] == "ops"]
    assert {r["method"] for r in ops if r["backend"] != "torch copy_"} == set(OP_NAMES)
    assert all(r["copy_fraction"] for r in ops if r["backend"] != "torch copy_")

    payload = json.loads((tmp_path / "results.json").read_text())
    assert {"meta", "summary", "results", "columns", "traffic_model"} <= set(payload)
    assert {"date", "device_name", "torch", "commit", "backends"} <= set(payload["meta"])
    for row in payload["results"]:
        model = {"step": {"adamw-forloop": "adamw", "adamw-foreach": "adamw",
                          "adamw-fused": "adamw", "sam-adamw": "sam_adamw",
                          "sam-sgd": "sam_sgd", "sassha": "sassha", "sassha-compiled": "sassha",
                          "sassha-hessian-ema": "hessian_ema"}.get(row["method"]),
                 "ops": "copy" if row["backend"] == "torch copy_" else row["method"]}[row["suite"]]
        if model != "copy":
            assert row["bytes"] == traffic.traffic_bytes(model, row["params"])
        assert row["gbps"] == pytest.approx(row["bytes"] / (row["median_ms"] / 1e3) / 1e9)
        if row["method"] != "adamw-fused" and row["suite"] == "step":
            assert row["baseline"] == "adamw-fused" and row["vs_baseline"] > 0

    png = (tmp_path / "step.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    markdown = (tmp_path / "results.md").read_text()
    assert "| workload |" in markdown and "step.png" in markdown and "torch" in markdown


TINY_GPT = dict(model="gpt", model_kwargs=dict(layers=1, width=16, heads=2, vocab=32, context=8),
                batch=2, device="cpu", warmup=1, windows=1, lazy_hessian=2, seed=0)


@pytest.mark.parametrize("method", TRAIN_METHODS)
def test_training_iteration_of_every_method_runs(method):
    result = train_worker.run(dict(TINY_GPT, method=method))
    assert len(result["iteration_s"]) == 2 and len(result["window_means_s"]) == 1
    assert result["peak_mem_mb"] > 0 and result["backend"]
    if method in ("sassha", "msassha"):
        assert result["backend"] in backend_choice.usable(CPU)


def test_training_suite_times_methods_in_fresh_processes():
    prof = profile("smoke", CPU, 1.0)._replace(train_windows=2)
    model = prof.train_models[0]
    rows = train_suite.run_model(model, CPU, prof, methods=("adamw", "sassha"))
    assert [r["method"] for r in rows] == ["adamw", "sassha"]
    for row in rows:
        assert row["workload"] == f"{model.label} batch {model.batch}" and row["reps"] == 2
        assert row["iter_min_ms"] <= row["median_ms"] <= row["iter_max_ms"]
        assert row["memory_measure"].startswith("peak RSS")
        assert row["peak_mem_mb"] > row["mem_delta_mb"] > 0


def test_a_failing_training_worker_reports_its_error():
    prof = profile("smoke", CPU, 1.0)
    with pytest.raises(RuntimeError, match="unknown training method"):
        train_suite.run_model(prof.train_models[0], CPU, prof, methods=("lion",))


def test_quick_profile_holds_the_sets_issues_2_and_3_ask_for():
    quick = profile("quick", CPU, 1.0)
    assert any(s.tensors >= 150 and s.numel >= 20_000_000 for s in quick.step_sets)
    assert any(s.tensors >= 160 and s.numel >= 50_000_000 for s in quick.step_sets)
    full = profile("full", CPU, 1.0)  # a 1 GiB cap bounds the sweep
    sweep = [s.numel for s in full.step_sets if s.name.startswith("sweep")]
    assert sweep and max(sweep) * 112 <= 2**30


TINY_SDPA_GPT = dict(TINY_GPT, model_kwargs=dict(TINY_GPT["model_kwargs"], attention="sdpa"))


def test_sdpa_attention_computes_the_hand_written_attention():
    torch.manual_seed(0)
    manual = GPT(GPTConfig(layers=2, width=16, heads=2, vocab=32, context=8))
    sdpa = GPT(GPTConfig(layers=2, width=16, heads=2, vocab=32, context=8, attention="sdpa"))
    sdpa.load_state_dict(manual.state_dict())
    idx = torch.randint(0, 32, (3, 8))
    torch.testing.assert_close(sdpa(idx), manual(idx), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="attention must be one of"):
        GPT(GPTConfig(attention="flash"))


def test_sdpa_models_get_first_order_methods_and_the_cnn_the_fd_rows():
    quick = profile("quick", CPU, 1.0)
    by_label = {m.label: m for m in quick.train_models}
    assert set(by_label) == {"resnet32", "gpt-4L-128", "gpt-4L-128-sdpa",
                             "gpt-4L-128-sdpa-compiled"}
    assert "attention" not in by_label["gpt-4L-128"].model_kwargs  # existing rows unchanged
    assert [m.compile for m in quick.train_models] == [False, False, False, True]
    assert train_suite.methods_for(by_label["gpt-4L-128"]) == TRAIN_METHODS
    assert train_suite.methods_for(by_label["resnet32"]) == TRAIN_METHODS + TRAIN_FD_METHODS
    for label in ("gpt-4L-128-sdpa", "gpt-4L-128-sdpa-compiled"):
        # SDPA has no double backward: neither the autograd estimator nor the authors' loops.
        assert (train_suite.methods_for(by_label[label], authors=True)
                == ("adamw", "sam-adamw", "sassha-fd", "msassha-fd"))
    assert train_suite.spec(by_label["gpt-4L-128-sdpa-compiled"], "adamw", CPU,
                            quick)["compile"] is True


@pytest.mark.parametrize("method", FIRST_ORDER_TRAIN_METHODS)
def test_first_order_methods_train_the_sdpa_gpt(method):
    result = train_worker.run(dict(TINY_SDPA_GPT, method=method))  # lazy_hessian 2: a Hessian step
    assert len(result["iteration_s"]) == 2 and result["peak_mem_mb"] > 0
    if method.endswith("-fd"):
        assert result["backend"] in backend_choice.usable(CPU)


def test_double_backward_sassha_cannot_train_the_sdpa_gpt():
    with pytest.raises(RuntimeError, match="finite_difference"):
        train_worker.run(dict(TINY_SDPA_GPT, method="sassha"))


def test_fd_sassha_trains_a_compiled_sdpa_gpt():
    # The one compiled case (compile time): Hessian steps (lazy_hessian 2) included.
    result = train_worker.run(dict(TINY_SDPA_GPT, method="sassha-fd", compile=True))
    assert len(result["iteration_s"]) == 2 and result["backend"] in backend_choice.usable(CPU)


def _train_row(method, ms, peak, delta, workload="gpt-sdpa batch 4"):
    return dict(suite="train", workload=workload, method=method, median_ms=ms,
                peak_mem_mb=peak, mem_delta_mb=delta)


def test_fd_summary_judges_each_ratio_against_issue_11s_targets():
    rows = [_train_row("adamw", 100.0, 500.0, 20.0), _train_row("sam-adamw", 200.0, 600.0, 40.0),
            _train_row("sassha-fd", 210.0, 700.0, 60.0), _train_row("msassha-fd", 110.0, 550.0, 30.0)]
    lines = summary.finite_difference(rows)
    assert lines[0].startswith("issue 11") and len(lines) == 2
    assert "sassha-fd / sam-adamw time 1.05x (target <= 1.10x: meets target)" in lines[1]
    assert "peak memory 1.17x (target <= 1.15x: MISSES target) [+MiB in training: 60 / 40" in lines[1]
    assert "msassha-fd / adamw time 1.10x (target <= 1.15x: meets target)" in lines[1]
    assert summary.finite_difference(rows[:3])[1].endswith("msassha-fd / adamw time: not measured")
    assert summary.finite_difference(rows[:2]) == []


def test_issue28_summary_judges_the_sdpa_gpt_at_the_batch_of_each_target():
    rows = []
    for batch, msassha_ms, sassha_ms in ((4, 124.0, 208.0), (16, 116.0, 212.0), (8, 120.0, 200.0)):
        workload = f"gpt-4L-128-sdpa batch {batch}"
        rows += [_train_row("adamw", 100.0, 1, 1, workload),
                 _train_row("sam-adamw", 200.0, 1, 1, workload),
                 _train_row("msassha-fd", msassha_ms, 1, 1, workload),
                 _train_row("sassha-fd", sassha_ms, 1, 1, workload)]
    rows.append(_train_row("adamw", 1.0, 1, 1, "gpt-4L-128-sdpa-compiled batch 4"))
    at4, at16, at8 = summary.issue28(rows)  # the compiled GPT is not judged
    assert "msassha-fd / adamw 1.24x (target <= 1.25x at batch 4: meets target)" in at4
    assert "sassha-fd / sam-adamw 1.04x (target <= 1.05x at batch 4: meets target)" in at4
    assert "msassha-fd / adamw 1.16x (target <= 1.15x at batch 16: MISSES target)" in at16
    assert "sassha-fd / sam-adamw 1.06x (target <= 1.05x at batch 16: MISSES target)" in at16
    assert "msassha-fd / adamw 1.20x (targets at batch 4 and 16 only: not checked)" in at8
    assert summary.issue28(rows[:2])[0].endswith("msassha-fd / adamw: not measured (or steps "
                                                 "skipped); sassha-fd / sam-adamw: not measured "
                                                 "(or steps skipped)")


def test_a_diverged_training_run_is_refused(monkeypatch):
    def diverging(method, model, *args):
        def iteration():
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return iteration, lambda: "none"
    monkeypatch.setattr(train_worker, "train_iteration", diverging)
    with pytest.raises(RuntimeError, match="diverged"):
        train_worker.run(dict(TINY_GPT, method="adamw"))


# -- the authors' code as rows (a stand-in with their API shape and their two crashes) ----

STANDIN_SASSHA = '''
import torch


class SASSHA(torch.optim.Optimizer):
    def __init__(self, params, hessian_power_scheduler=None, lr=0.15, betas=(0.9, 0.999),
                 weight_decay=0.0, rho=0.0, lazy_hessian=10, eps=1e-4, **kwargs):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay, rho=rho,
                                      eps=eps))
        self.hessian_power_scheduler = hessian_power_scheduler

    @torch.no_grad()
    def perturb_weights(self, zero_grad=True):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.state[p]["e_w"] = p.grad * group["rho"]
                    p.add_(self.state[p]["e_w"])
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def unperturb(self):
        for group in self.param_groups:
            for p in group["params"]:
                if "e_w" in self.state[p]:
                    p.sub_(self.state[p]["e_w"])

    @torch.no_grad()
    def step(self, closure=None):
        power = self.hessian_power_scheduler.step() if self.hessian_power_scheduler else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.sub_(group["lr"] * p.grad.abs() ** power * p.grad.sign())
'''

STANDIN_MSASSHA = '''
import torch


class MSASSHA(torch.optim.Optimizer):
    def __init__(self, params, lr=0.15, betas=(0.9, 0.999), weight_decay=1e-2,
                 lazy_hessian=10, rho=0.3, hessian_power=1, **kwargs):
        self.hessian_power = hessian_power
        super().__init__(params, dict(lr=lr, rho=rho))
        for group in self.param_groups:
            for p in group["params"]:
                p.hess = 0.0
                if self.track_hessian:  # never set: AttributeError, as in theirs
                    p.real_hess = 0.0

    @torch.no_grad()
    def step(self, closure=None):
        update(self.param_groups[0])


def update(group):
    for p in group["params"]:
        if p.grad is not None:  # `self` is no name here: NameError, as in theirs
            p.sub_(group["lr"] * p.grad.abs() ** self.hessian_power * p.grad.sign())
'''


@pytest.fixture
def standin(tmp_path):
    (tmp_path / "optimizers").mkdir()
    (tmp_path / "optimizers" / "sassha.py").write_text(STANDIN_SASSHA)
    (tmp_path / "optimizers" / "msassha.py").write_text(STANDIN_MSASSHA)
    return tmp_path


def test_authors_code_path_without_their_files_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a checkout of the authors' repository"):
        authors.load(tmp_path)
    with pytest.raises(SystemExit):
        run.parse_args(["--authors-code", str(tmp_path)])


def test_authors_msassha_runs_with_the_workarounds_only(standin):
    code = authors.load(standin)
    p = torch.ones(3, requires_grad=True)
    with pytest.raises(AttributeError, match="track_hessian"):
        code.msassha_module.MSASSHA([p])  # as published
    opt = code.msassha([p], HESSIAN_POWER, lr=0.1)
    p.grad = torch.full((3,), 4.0)
    opt.step()
    # hessian_power 0.5 reaches their update through the bound module global
    assert torch.allclose(p.detach(), torch.full((3,), 1.0 - 0.1 * 2.0))
    sassha = code.sassha([p], HESSIAN_POWER, lr=0.1)
    p.grad = torch.full((3,), 4.0)
    sassha.step()
    assert torch.allclose(p.detach(), torch.full((3,), 0.8 - 0.1 * 2.0))


def test_step_suite_times_the_authors_rows_with_the_rest(standin):
    code = authors.load(standin)
    param_set = sweep_set(2_000)
    tensors = materialize(param_set, CPU, torch.float32)
    all_cases = cases(["reference"], code)
    theirs = [(c.method, c.backend) for c in all_cases if c.backend == AUTHORS]
    assert theirs == [("sassha", "authors"), ("msassha", "authors")]
    assert ("msassha", "reference") in [(c.method, c.backend) for c in all_cases]
    budget = Budget(warmup=1, min_reps=2, max_reps=2, target_s=0.0, min_rep_s=0.0)
    before = [p.detach().clone() for p in tensors.params]
    rows = run_set(param_set, tensors, all_cases, CPU, budget)
    assert any(not torch.equal(b, p) for b, p in zip(before, tensors.params))
    add_ratios(rows)
    lines = summary.versus_authors(rows)
    assert lines[0].startswith("versus the authors' code")
    sassha_line = next(line for line in lines if " sassha: authors" in line)
    assert "reference" in sassha_line and "x the authors' speed" in sassha_line
    assert "x AdamW's time" in sassha_line
    assert any(" msassha: authors" in line for line in lines)


@pytest.mark.parametrize("method", AUTHORS_TRAIN_METHODS)
def test_authors_training_methods_run_in_their_loops(standin, method):
    result = train_worker.run(dict(TINY_GPT, method=method, authors_code=str(standin)))
    assert result["backend"] == AUTHORS and len(result["iteration_s"]) == 2
    with pytest.raises(ValueError, match="needs the authors' code"):
        train_worker.run(dict(TINY_GPT, method=method))


def test_against_the_real_authors_checkout():
    path = os.environ.get("SASSHA_AUTHORS_CODE")
    if not path:
        pytest.skip("SASSHA_AUTHORS_CODE is not set (a checkout of the authors' repository; "
                    "never downloaded by the tests)")
    code = authors.load(path)
    param_set = sweep_set(5_000)
    tensors = materialize(param_set, CPU, torch.float32)
    theirs = [c for c in cases([], code) if c.backend == AUTHORS]
    before = [p.detach().clone() for p in tensors.params]
    for case in theirs:
        iteration = case.build(tensors, CPU)
        iteration()
        iteration()
    assert all(bool(torch.isfinite(p).all()) for p in tensors.params)
    assert any(not torch.equal(b, p) for b, p in zip(before, tensors.params))
    for method in AUTHORS_TRAIN_METHODS:  # a Hessian step (lazy_hessian 2) included
        result = train_worker.run(dict(TINY_GPT, method=method, authors_code=path))
        assert result["backend"] == AUTHORS


# -- quality suite ----------------------------------------------------------------------

def test_symmetric_noise_changes_exactly_the_asked_fraction_to_other_classes():
    labels = torch.arange(1000) % digits.CLASSES
    noisy = digits.symmetric_noise(labels, 0.4, torch.Generator().manual_seed(0))
    changed = noisy != labels
    assert int(changed.sum()) == 400
    assert noisy.min() >= 0 and noisy.max() < digits.CLASSES
    assert torch.equal(digits.symmetric_noise(labels, 0.0, torch.Generator()), labels)
    with pytest.raises(ValueError, match="label noise rate"):
        digits.symmetric_noise(labels, 1.0, torch.Generator())


def test_split_keeps_the_test_set_clean_and_the_same_at_every_noise_level():
    clean, noisy = digits.make_split(0.0), digits.make_split(0.6)
    assert torch.equal(clean.test_x, noisy.test_x) and torch.equal(clean.test_y, noisy.test_y)
    assert torch.equal(clean.fit_x, noisy.fit_x)
    train_labels = torch.cat([noisy.val_y, noisy.fit_y])
    clean_labels = torch.cat([clean.val_y, clean.fit_y])
    assert noisy.flipped == int((train_labels != clean_labels).sum()) == round(0.6 * len(train_labels))
    assert len(clean.fit_y) + len(clean.val_y) + len(clean.test_y) == 1797


def test_quality_grid_picks_the_best_held_out_accuracy_and_never_a_diverged_run(monkeypatch):
    outcome = {0.03: (0.5, True), 0.1: (0.9, False), 0.3: (0.7, True), 1.0: (0.7, True)}

    def fake_train(method, point, split, epochs, seed, width=16):
        val, finite = outcome[point.lr]
        return quality.RunResult(val, val + seed / 100, [0.1] * epochs, [0.5] * epochs,
                                       finite)
    monkeypatch.setattr(quality, "train", fake_train)
    prof = QualityProfile("t", (0.2,), epochs=2, seeds=3, grid=True, limit=300)
    sgd = [m for m in QUALITY_METHODS if m.name == "sgd"]
    rows, curves = quality.run(prof, sgd)
    # 0.1 diverged; 0.3 and 1.0 tie: the smaller is kept
    assert rows[0]["lr"] == 0.3 and rows[0]["seeds"] == 3
    assert rows[0]["test_accs"] == pytest.approx([0.7, 0.71, 0.72])
    assert rows[0]["grid_val_acc"] == {"0.03": 0.5, "0.1": 0.9, "0.3": 0.7, "1": 0.7}
    assert curves[0]["elapsed_s"] == pytest.approx([0.5, 1.0])
    assert quality.plan_size(prof, sgd) == 4 + 2


def test_quality_suite_trains_every_method_and_writes_its_files(tmp_path):
    assert run.main(["--smoke", "--suite", "quality", "--out", str(tmp_path)]) == 0
    out = tmp_path / "quality-smoke"
    assert not (tmp_path / "results.csv").exists()  # the throughput results stay untouched
    rows = _read_csv(out / "quality.csv")
    prof = quality_profile("smoke")
    assert {(float(r["noise"]), r["method"]) for r in rows} == {
        (n, m.name) for n in prof.noises for m in QUALITY_METHODS}
    for row in rows:
        accs = json.loads(row["test_accs"])
        assert len(accs) == prof.seeds and all(0.0 <= a <= 1.0 for a in accs)
        assert float(row["epoch_s_median"]) > 0 and row["diverged"] == "0"
    for png in ("quality-noise.png", "quality-time.png"):
        assert (out / png).read_bytes().startswith(b"\x89PNG")
    assert "± " in (out / "quality.md").read_text()


def test_fd_summary_refuses_a_verdict_on_a_run_that_skipped_steps():
    rows = [_train_row("adamw", 100.0, 500.0, 20.0), _train_row("sam-adamw", 200.0, 600.0, 40.0),
            dict(_train_row("sassha-fd", 100.0, 700.0, 60.0), skipped_steps=26),
            _train_row("msassha-fd", 110.0, 550.0, 30.0)]
    line = summary.finite_difference(rows)[1]
    assert "sassha-fd / sam-adamw time 0.50x: NOT VALID (sassha-fd skipped 26 steps" in line
    assert "meets target" in line  # the msassha-fd ratio, which skipped nothing, keeps its verdict
    assert "time 0.50x (target" not in line


def test_the_training_worker_reports_skipped_steps():
    result = train_worker.run(dict(TINY_SDPA_GPT, method="sassha-fd"))
    assert result["skipped_steps"] == 0
