"""``python -m bench``: plan the jobs of the chosen suites, run them under a progress bar,
print a table per suite and the issue summary, write CSV / JSON / markdown / PNG."""
import argparse
import gc
import os
import pathlib
import sys
import traceback
from typing import Callable, List, NamedTuple, Optional

import torch

from .baselines import authors
from .harness import backend_choice, meta
from .harness.config import (LMProfile, Profile, QualityProfile, lm_profile, profile,
                             quality_profile)
from .harness.progress import Progress
from .harness.results import add_ratios
from .output import lm_report, quality_report, summary, tables, throughput_report
from .suites import language_model, ops, quality, step, train
from .workloads.shapes import ParamSet

SUITES = ("step", "ops", "train")
# Suites that run only when named in --suite.
EXTRA_SUITES = ("quality", "lm")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
RESULTS = pathlib.Path(__file__).resolve().parent / "results"


class Job(NamedTuple):
    suite: str
    label: str
    run: Callable[[], List[dict]]


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Throughput of SASSHA (sassha_fast backends) against AdamW and SAM.")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="profile", action="store_const", const="quick",
                      help="model-shaped sets and a short sweep, small training batches "
                           "(the default; ~3 min on a 2-core CPU)")
    size.add_argument("--full", dest="profile", action="store_const", const="full",
                      help="full GPT-2 small, a sweep up to the memory budget, larger batches, "
                           "more repetitions (long)")
    size.add_argument("--smoke", dest="profile", action="store_const", const="smoke",
                      help="tiny sizes: checks the plumbing in seconds (numbers meaningless)")
    parser.set_defaults(profile="quick")
    parser.add_argument("--suite", default=",".join(SUITES),
                        help="comma-separated suites among step, ops, train (the default: "
                             "all three), quality (label-noise accuracy on digits) and lm (a "
                             "byte-level GPT on the Python standard library); the last two run "
                             "only when named, sized by --smoke / --quick / --full, see "
                             "bench/README.md")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda if present, else cpu)")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="output folder (default: bench/results/<device kind>/)")
    parser.add_argument("--backends", default="",
                        help="comma-separated sassha_fast backends (default: every one usable "
                             "on the device)")
    parser.add_argument("--sets", default="",
                        help="comma-separated parameter sets for the step and ops suites, "
                             "among the profile's (e.g. resnet50,sweep-1M; default: the "
                             "profile's step sets, and its ops sets for the ops suite)")
    parser.add_argument("--models", default="",
                        help="comma-separated training-model name prefixes, e.g. resnet,gpt "
                             "(default: both)")
    parser.add_argument("--batch", type=int, default=None,
                        help="batch size of the training suite's models (default: the "
                             "profile's, e.g. 4 on a CPU with --quick)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="parameter dtype of the step and ops suites (default float32)")
    parser.add_argument("--authors-code", type=pathlib.Path, default=None, metavar="PATH",
                        help="a checkout of the authors' SASSHA repository: adds their SASSHA "
                             "and M-SASSHA to the step and train suites "
                             "(bench/baselines/authors.py)")
    parser.add_argument("--list", action="store_true",
                        help="print the planned measurements and exit")
    parser.add_argument("--memory-cap-gib", type=float, default=16.0,
                        help="--full's sweep stops before this much memory (or half of what "
                             "is free) would be needed (default 16)")
    args = parser.parse_args(argv)
    args.suites = [s for s in args.suite.split(",") if s]
    try:
        args.authors = authors.load(args.authors_code) if args.authors_code else None
    except ValueError as exc:
        parser.error(str(exc))
    unknown = set(args.suites) - set(SUITES + EXTRA_SUITES)
    if unknown or not args.suites:
        parser.error(f"--suite takes a comma-separated subset of "
                     f"{', '.join(SUITES + EXTRA_SUITES)}")
    return args


def _selected(prof: Profile, names: str, default) -> List[ParamSet]:
    """The sets named in --sets (any of the profile's), else ``default``."""
    wanted = [n for n in names.split(",") if n]
    if not wanted:
        return list(default)
    known = {s.name: s for s in prof.step_sets + prof.ops_sets}
    missing = [n for n in wanted if n not in known]
    if missing:
        raise SystemExit(f"unknown --sets {', '.join(missing)} (this profile has: "
                         f"{', '.join(known)})")
    return [known[n] for n in wanted]


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def step_jobs(prof: Profile, args, device, dtype, names: List[str]) -> List[Job]:
    def run(param_set: ParamSet, cases: List[step.Case]) -> List[dict]:
        tensors = step.materialize(param_set, device, dtype)
        return step.run_set(param_set, tensors, cases, device, prof.step_budget)
    jobs = []
    for i, param_set in enumerate(_selected(prof, args.sets, prof.step_sets)):
        # The compiled rows on the first set only: their compilation takes minutes.
        cases = step.cases(names, args.authors, prof.step_compiler if i == 0 else None)
        jobs.append(Job("step", f"{param_set.name}: {len(cases)} methods in turns",
                        lambda param_set=param_set, cases=cases: run(param_set, cases)))
    return jobs


def ops_jobs(prof: Profile, args, device, dtype, names: List[str]) -> List[Job]:
    def run(param_set: ParamSet) -> List[dict]:
        tensors = ops.materialize(param_set, device, dtype)
        return ops.run_set(param_set, tensors, names, device, prof.ops_budget)
    return [Job("ops", f"{param_set.name}: {len(ops.OP_NAMES)} ops x {len(names)} "
                       "backends and copies in turns", lambda param_set=param_set: run(param_set))
            for param_set in _selected(prof, args.sets, prof.ops_sets)]


def train_jobs(prof: Profile, args, device) -> List[Job]:
    prefixes = [m for m in args.models.split(",") if m]
    models = [m._replace(batch=args.batch or m.batch) for m in prof.train_models
              if not prefixes or any(m.label.startswith(p) for p in prefixes)]
    if prefixes and not models:
        raise SystemExit(f"--models {args.models} matches none of "
                         f"{', '.join(m.label for m in prof.train_models)}")
    code = str(args.authors.path) if args.authors else None
    jobs = []
    for model in models:
        methods = train.methods_for(model, authors=bool(args.authors))
        jobs.append(Job("train", f"{model.label}: {len(methods)} methods in turns",
                        lambda model=model, methods=methods:
                        train.run_model(model, device, prof, methods, code)))
    return jobs


def run_jobs(jobs: List[Job], progress: Progress, errors: List[str]) -> List[dict]:
    rows = []
    for job in jobs:
        progress.show(f"{job.suite} {job.label}")
        try:
            rows += job.run()
        except Exception as exc:  # one failing measurement must not lose the others
            progress.clear()
            message = f"{job.suite} {job.label}: {type(exc).__name__}: {exc}"
            errors.append(message)
            print(f"FAILED {message}", file=sys.stderr)
            traceback.print_exc(limit=3)
        # Optimizer state and temporaries of one measurement must not weigh on the next.
        release_memory()
        progress.advance()
    progress.clear()
    return rows


def run_training_suite(name: str, runs: int, train: Callable[[Callable[[str], None]], object],
                       report: Callable[[object, dict], None], info: dict,
                       errors: List[str]) -> None:
    """A training suite (quality, lm) under a progress bar of its ``runs`` training runs:
    ``train(show)`` returns its results, ``report(results, info)`` writes and prints them."""
    progress = Progress(runs)

    def show(label: str) -> None:
        progress.show(f"{name} {label}")
        progress.advance()
    try:
        results = train(show)
    except Exception as exc:  # the other suites still run
        progress.clear()
        errors.append(f"{name}: {type(exc).__name__}: {exc}")
        print(f"FAILED {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        traceback.print_exc(limit=3)
        return
    progress.clear()
    report(results, dict(info, load_average_after=os.getloadavg()))


def run_quality(profile: QualityProfile, out: pathlib.Path, info: dict,
                errors: List[str]) -> None:
    def report(results, quality_info: dict) -> None:
        rows, curves = results
        written = quality_report.write_all(rows, curves, out, quality_info, profile)
        print("\nQuality: clean test accuracy (%) under symmetric label noise, mean ± std over "
              f"{profile.seeds} seeds\n" + quality_report.table_markdown(rows))
        print("wrote " + ", ".join(written), flush=True)
    run_training_suite("quality", quality.plan_size(profile),
                       lambda show: quality.run(profile, progress=show), report, info,
                       errors)


def run_lm(profile: LMProfile, device: torch.device, out: pathlib.Path, info: dict,
           errors: List[str]) -> None:
    def report(results, lm_info: dict) -> None:
        rows, curves, corpus = results
        lm_info.update(corpus, lm_profile=profile._asdict())
        written = lm_report.write_all(rows, curves, out, lm_info, profile)
        print(f"\nLanguage model: test bits per byte, mean ± std over {profile.seeds} seeds "
              f"(corpus SHA-256 {corpus['corpus_sha256'][:16]}...)\n"
              + lm_report.table_markdown(rows))
        print("wrote " + ", ".join(written), flush=True)
        if any(r["diverged"] or any(r["skipped_steps"]) for r in rows):
            print("note: some runs diverged or skipped steps (see the runs column)",
                  file=sys.stderr)
    run_training_suite("lm", language_model.plan_size(profile, device=device),
                       lambda show: language_model.run(profile, device, progress=show), report,
                       info, errors)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here")
    dtype = DTYPES[args.dtype]
    prof = profile(args.profile, device, args.memory_cap_gib)
    names = backend_choice.usable(device, [b for b in args.backends.split(",") if b] or None)
    info = meta.collect(device)
    info.update(profile=args.profile, suites=args.suites, dtype=args.dtype,
                backends=backend_choice.report(device))
    if args.authors:
        info.update(authors_code=str(args.authors.path), authors_workarounds=authors.WORKAROUNDS)
    out = args.out or RESULTS / info["device_kind"]

    planned = {"step": lambda: step_jobs(prof, args, device, dtype, names),
               "ops": lambda: ops_jobs(prof, args, device, dtype, names),
               "train": lambda: train_jobs(prof, args, device)}
    jobs = {suite: planned[suite]() for suite in SUITES if suite in args.suites}
    quality_prof = quality_profile(args.profile) if "quality" in args.suites else None
    lm_prof = lm_profile(args.profile, device) if "lm" in args.suites else None
    if args.list:
        for suite_jobs in jobs.values():
            print("\n".join(f"{job.suite} {job.label}" for job in suite_jobs))
        if quality_prof:
            print(f"quality: {quality.plan_size(quality_prof)} training runs ({quality_prof})")
        if lm_prof:
            print(f"lm: {language_model.plan_size(lm_prof, device=device)} training runs "
                  f"({lm_prof})")
        return 0
    print(f"sassha_fast benchmarks ({args.profile}) on {info['device_name']} [{device}], "
          f"torch {info['torch']}, backends: {', '.join(names)}", flush=True)
    load = info["load_average_before"][0]
    if load > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {load:.1f} on {os.cpu_count()} CPUs: other work shares "
              "the machine, timings will be noisy (compare ratios within one run)",
              file=sys.stderr)
    errors: List[str] = []
    if quality_prof:
        run_quality(quality_prof, out / f"quality-{args.profile}", info, errors)
    if lm_prof:
        run_lm(lm_prof, device, out / f"lm-{args.profile}", info, errors)
    if not jobs:
        return 1 if errors else 0
    progress = Progress(sum(len(j) for j in jobs.values()))
    rows: List[dict] = []
    for suite, suite_jobs in jobs.items():
        suite_rows = run_jobs(suite_jobs, progress, errors)
        add_ratios(suite_rows)
        rows += suite_rows
        if suite_rows:
            print("\n" + tables.text(suite, suite_rows), flush=True)
    info["load_average_after"] = os.getloadavg()
    # The step and ops suites run here; the training suite's peaks are in its rows.
    info["peak_memory_mb_this_process"] = meta.peak_memory_mb(device)
    info["errors"] = errors
    lines = summary.summarize(rows, info["backends"], device.type)
    if lines:
        print("\n" + "\n".join(lines))
    written = throughput_report.write_all(rows, out, info, lines)
    print(f"\npeak memory of this process (step and ops suites): "
          f"{info['peak_memory_mb_this_process']:,.0f} MiB")
    print("wrote " + ", ".join(written))
    if errors:
        print(f"{len(errors)} measurement(s) failed (see above)", file=sys.stderr)
        return 1
    return 0
