"""Training-iteration suite: whole iterations (forward, backward passes, optimizer) of a
CIFAR ResNet and a small GPT on one synthetic batch. Each method lives in its own fresh
process (bench/suites/train_worker.py), so that its peak memory is its own, and the methods
of a model are timed in turns, one window of iterations each, then the next round, so that
load from other processes falls on all of them alike."""
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
from typing import List, Optional, Sequence, Tuple

import torch

from ..harness.config import Profile, TrainModel
from ..methods import (AUTHORS_TRAIN_METHODS, FIRST_ORDER_TRAIN_METHODS, TRAIN_FD_METHODS,
                       TRAIN_METHODS)
from .train_worker import DONE, RESULT_PREFIX

REPO = pathlib.Path(__file__).resolve().parents[2]


def methods_for(model: TrainModel, authors: bool = False) -> Tuple[str, ...]:
    """The methods timed on a model: on SDPA attention only those without a double
    backward; the CNN also gets the finite-difference rows."""
    if model.model_kwargs.get("attention", "manual") != "manual":
        return FIRST_ORDER_TRAIN_METHODS
    methods = TRAIN_METHODS + (TRAIN_FD_METHODS if model.model == "cifar_resnet" else ())
    return methods + (AUTHORS_TRAIN_METHODS if authors else ())


def spec(model: TrainModel, method: str, device: torch.device, profile: Profile,
         authors_code: Optional[str] = None) -> dict:
    return dict(model=model.model, model_kwargs=model.model_kwargs, batch=model.batch,
                method=method, device=str(device), warmup=profile.train_warmup,
                windows=profile.train_windows, lazy_hessian=profile.lazy_hessian, seed=0,
                authors_code=authors_code, compile=model.compile)


class Worker:
    """A train_worker process, driven one command at a time."""

    def __init__(self, job_spec: dict):
        self.spec = job_spec
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.suites.train_worker", json.dumps(job_spec)],
            cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
            text=True)

    def _answer(self) -> str:
        for line in self.process.stdout:
            if line.startswith((DONE, RESULT_PREFIX)):
                return line
        self.process.wait()
        self.stderr.seek(0)
        raise RuntimeError(f"training worker failed ({self.spec['model']}, "
                           f"{self.spec['method']}, exit {self.process.returncode}):\n"
                           f"{self.stderr.read()[-3000:]}")

    def ready(self) -> None:
        self._answer()

    def ask(self, command: str) -> str:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._answer()

    def finish(self) -> dict:
        result = json.loads(self.ask("finish")[len(RESULT_PREFIX):])
        self.process.wait()
        return result

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.stderr.close()


def run_model(model: TrainModel, device: torch.device, profile: Profile,
              methods: Sequence[str] = TRAIN_METHODS,
              authors_code: Optional[str] = None) -> List[dict]:
    workers = [Worker(spec(model, method, device, profile, authors_code)) for method in methods]
    try:
        for worker in workers:
            worker.ready()
        for worker in workers:
            worker.ask("warmup")
        for _ in range(profile.train_windows):
            for worker in workers:
                worker.ask("window")
        results = [worker.finish() for worker in workers]
    finally:
        for worker in workers:
            worker.close()
    return [_row(model, method, result) for method, result in zip(methods, results)]


def _row(model: TrainModel, method: str, result: dict) -> dict:
    means = result["window_means_s"]
    return dict(suite="train", workload=f"{model.label} batch {model.batch}",
                params=result["params"], tensors=result["tensors"], dtype="float32",
                method=method, backend=result["backend"],
                median_ms=statistics.median(means) * 1e3, min_ms=min(means) * 1e3,
                max_ms=max(means) * 1e3, reps=len(means),
                iter_min_ms=min(result["iteration_s"]) * 1e3,
                iter_max_ms=max(result["iteration_s"]) * 1e3,
                peak_mem_mb=result["peak_mem_mb"], mem_delta_mb=result["mem_delta_mb"],
                memory_measure=result["memory_measure"],
                skipped_steps=result.get("skipped_steps", 0))
