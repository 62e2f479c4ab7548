"""The language-model suite (python -m bench --suite lm): its corpus, its protocol and a
smoke run through the command line."""
import csv
import json
import math

import pytest
import torch

from bench import run
from bench.harness.config import lm_profile
from bench.harness.protocol import Point
from bench.methods import LM_METHODS, Method
from bench.output import lm_report
from bench.suites import language_model
from bench.workloads.corpus import SPLITS, evaluation_windows, load, random_batch, source_files

CPU = torch.device("cpu")


def _fake_stdlib(root, files=300):
    """A folder shaped like a standard library: modules, packages, and the installed
    packages and caches that are not part of it."""
    for i in range(files):
        path = root / (f"pkg{i % 7}" if i % 3 else "") / f"mod_{i:03d}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# module {i}\n" + f"def f_{i}(x):\n    return x * {i}\n" * (1 + i % 5))
    for junk in ("site-packages/numpy/core.py", "dist-packages/x.py", "pkg1/__pycache__/a.py"):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_text("installed = True\n")
    (root / "notes.txt").write_text("not python\n")
    return root


def _split_of_files(corpus):
    return {f: split for split, files in corpus.files.items() for f in files}


def test_split_is_by_file_deterministic_and_leaves_out_installed_packages(tmp_path):
    root = _fake_stdlib(tmp_path)
    first, again = load(root), load(root)
    assert first.files == again.files and first.sha256 == again.sha256
    placed = _split_of_files(first)
    # every module in exactly one split, nothing else
    assert sum(len(f) for f in first.files.values()) == len(placed) == 300
    assert not any("site-packages" in f or "dist-packages" in f or "__pycache__" in f
                   for f in placed)
    assert all(first.files[s] and first.files[s] == sorted(first.files[s])
               for s in SPLITS)
    # each split's stream is its files' bytes, concatenated in sorted order
    for split in SPLITS:
        expected = b"".join((root / f).read_bytes() for f in first.files[split])
        assert bytes(first.streams[split].tolist()) == expected
    # a file's split follows from its path alone: removing other files moves nothing
    for gone in first.files["train"][:40] + first.files["test"][:2]:
        (root / gone).unlink()
    fewer = _split_of_files(load(root))
    assert fewer and all(placed[f] == s for f, s in fewer.items())
    assert all(0 < len(first.files[s]) < 0.15 * 300 for s in ("test", "validation"))


def test_the_corpus_hash_covers_every_file_path_and_content(tmp_path):
    root = _fake_stdlib(tmp_path)
    base = load(root).sha256
    module = root / "mod_000.py"
    module.write_text(module.read_text() + " ")
    edited = load(root).sha256
    module.rename(root / "mod_000_renamed.py")
    renamed = load(root).sha256
    assert len({base, edited, renamed}) == 3
    info = load(root).info()
    assert info["corpus_sha256"] == renamed and info["corpus_files"] == 300
    assert info["corpus_bytes"] == sum(len((root / f).read_bytes()) for f in
                                       source_files(root))


def test_the_training_cap_keeps_whole_files_and_whole_evaluation_splits(tmp_path):
    root = _fake_stdlib(tmp_path)
    whole, capped = load(root), load(root, train_bytes=2000)
    assert set(capped.files["train"]) < set(whole.files["train"])
    assert 2000 <= len(capped.streams["train"]) < 2000 + max(
        len((root / f).read_bytes()) for f in whole.files["train"])
    assert capped.files["validation"] == whole.files["validation"]
    assert capped.files["test"] == whole.files["test"]
    assert capped.sha256 == whole.sha256 and capped.info()["corpus_files"] == 300


def test_windows_predict_the_next_byte():
    stream = torch.arange(100, dtype=torch.uint8)
    x, y = random_batch(stream, 5, 8, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 8) and torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y - x, torch.ones_like(x))
    x, y = evaluation_windows(stream, 4, 8)
    assert x[0, 0] == 0 and y[-1, -1] == 99  # spread over the whole stream
    with pytest.raises(ValueError, match="shorter than a window"):
        random_batch(stream, 1, 100, torch.Generator())


def test_schedule_warms_up_then_decays_to_zero():
    factor = language_model.schedule(100, warmup=0.1)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0) and factor(100) == pytest.approx(0.0, abs=1e-12)
    assert all(factor(i) >= factor(i + 1) for i in range(10, 100))


def _fake_run(val, test, s_per_iter=1.0, finite=True, iterations=10, skipped=0):
    nan = math.nan
    return language_model.LMRun(val if finite else nan, test if finite else nan, [iterations],
                          [val], [s_per_iter * iterations], s_per_iter * iterations,
                          iterations, iterations * 4 * 16, finite, skipped,
                          "" if finite else "iteration 3: non-finite validation loss")


def test_lr_is_chosen_on_validation_not_test_and_diverged_runs_are_reported(
        monkeypatch, tmp_path):
    # lr 0.001 is best on test, 0.003 on validation; 0.01 is best of all but diverged
    outcome = {0.001: (2.0, 1.0), 0.003: (1.5, 3.0), 0.01: (0.1, 0.1), 0.03: (2.5, 2.5)}
    calls = []

    def fake_train(method, point, data, profile, seed, device, iterations=None):
        lr = point.lr
        calls.append((method.name, lr, seed, iterations))
        val, test = outcome[lr]
        if lr == 0.01:
            return _fake_run(val, test, finite=False, skipped=100)
        if seed == 2:  # one of the chosen learning rate's seeds diverges
            return _fake_run(val, test, finite=False, skipped=100)
        return _fake_run(val + seed, test + seed, skipped=seed)
    monkeypatch.setattr(language_model, "train", fake_train)
    adamw = [m for m in LM_METHODS if m.name == "adamw"]
    assert adamw[0].lrs == tuple(outcome)
    profile = lm_profile("smoke", CPU)._replace(grid=True, seeds=3)
    corpus = load(_fake_stdlib(tmp_path))
    rows, curves, info = language_model.run(profile, CPU, adamw, corpus=corpus)
    (row,) = rows
    assert row["lr"] == 0.003
    assert row["grid_val_bpb"]["0.003"] == pytest.approx(1.5 / math.log(2))
    assert row["grid_val_bpb"]["0.01"] is None and row["grid_skipped_steps"]["0.01"] == 100
    assert "non-finite" in row["grid_stopped"]["0.01"]
    runs_column = lm_report.table_markdown(rows).splitlines()[-1].split(" | ")[-1]
    assert runs_column == ("1 of 3 seeds diverged; skipped steps per seed: 0, 1, 100; "
                           "grid lr 0.01 diverged, 100 skipped steps |")
    # seeds 0 and 1 are scored, seed 2 is counted as diverged, not averaged in
    assert row["diverged"] == 1 and row["test_bpbs"][2] is None
    assert row["test_bpb_mean"] == pytest.approx((3.0 + 4.0) / 2 / math.log(2))
    assert row["skipped_steps"] == [0, 1, 100] and row["stopped"]
    assert curves[0]["seeds"] == 2 and info["corpus_sha256"] == corpus.sha256
    assert [c[:3] for c in calls] == [("adamw", 0.001, 0), ("adamw", 0.003, 0),
                                      ("adamw", 0.01, 0), ("adamw", 0.03, 0),
                                      ("adamw", 0.003, 1),
                                      ("adamw", 0.003, 2)]


def test_equal_time_gives_each_method_the_reference_methods_training_time(
        monkeypatch, tmp_path):
    speed = {"adamw": 0.5, "sassha": 2.0}   # seconds per iteration

    def fake_train(method, point, data, profile, seed, device, iterations=None):
        return _fake_run(1.0, 1.0, speed[method.name], iterations=iterations or 10)
    monkeypatch.setattr(language_model, "train", fake_train)
    methods = [m for m in LM_METHODS if m.name in speed]
    profile = lm_profile("smoke", CPU)._replace(iterations=10)
    assert language_model.plan_size(profile, methods) == 2 * 2 + 1
    rows, _, _ = language_model.run(profile, CPU, methods, corpus=load(_fake_stdlib(tmp_path)))
    by_name = {r["method"]: r for r in rows}
    assert by_name["adamw"]["equal_time_iterations"] == 40
    assert by_name["sassha"]["equal_time_iterations"] == 10
    assert by_name["adamw"]["equal_time_train_s"] == pytest.approx(
        by_name["sassha"]["equal_time_train_s"])


def test_a_diverging_run_stops_and_says_so(tmp_path):
    blowup = Method("sgd-1e30", (1e30,), lambda p, lr: torch.optim.SGD(p, lr=lr),
                    "plain", "sdpa", "")
    profile = lm_profile("smoke", CPU)
    data = language_model.prepare(load(_fake_stdlib(tmp_path)), profile, CPU)
    result = language_model.train(blowup, Point(1e30), data, profile, 0, CPU)
    assert not result.finite and "non-finite" in result.stopped
    assert result.iterations < profile.iterations and math.isnan(result.test_loss)
    healthy = language_model.train(LM_METHODS[0], Point(3e-3), data, profile, 0, CPU)
    assert healthy.finite and not healthy.stopped and healthy.iterations == profile.iterations


def _read_csv(path):
    with open(path) as handle:
        lines = handle.read().splitlines()
    meta = dict(line[2:].split(": ", 1) for line in lines if line.startswith("# "))
    return meta, list(csv.DictReader(line for line in lines if not line.startswith("#")))


def test_smoke_run_writes_its_files_with_the_same_tokens_for_every_method(tmp_path):
    assert run.main(["--smoke", "--suite", "lm", "--out", str(tmp_path)]) == 0
    out = tmp_path / "lm-smoke"
    assert not (tmp_path / "results.csv").exists()  # the throughput results stay untouched
    meta, rows = _read_csv(out / "lm.csv")
    profile = lm_profile("smoke", CPU)
    assert [r["method"] for r in rows] == [m.name for m in LM_METHODS]
    tokens = {int(r["tokens"]) for r in rows}
    assert tokens == {profile.iterations * profile.batch * profile.context}
    corpus = load(train_bytes=profile.train_bytes)
    assert meta["corpus_sha256"] == corpus.sha256 == rows[0]["corpus_sha256"]
    assert int(meta["corpus_bytes"]) == corpus.total_bytes
    for row in rows:
        bpbs = json.loads(row["test_bpbs"])
        assert len(bpbs) == profile.seeds
        assert all(b is None or 0 < b < 9 for b in bpbs)  # 8 bits: a uniform guess
        assert float(row["s_per_iter"]) > 0
    payload = json.loads((out / "lm.json").read_text())
    assert payload["meta"]["train_bytes"] == len(corpus.streams["train"])
    assert len(payload["meta"]["load_average_after"]) == 3
    assert (out / "lm-curves.png").read_bytes().startswith(b"\x89PNG")
    report = (out / "lm.md").read_text()
    assert corpus.sha256 in report and "± " in report
