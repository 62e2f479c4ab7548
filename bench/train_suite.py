"""Training-iteration suite: whole iterations (forward, backward passes, optimizer) of a
CIFAR ResNet and a small GPT on one synthetic batch, each method in a fresh process
(bench/train_worker.py) so that its peak memory is measured alone."""
import json
import os
import pathlib
import statistics
import subprocess
import sys
import torch

from .config import Profile, TrainModel
from .train_worker import RESULT_PREFIX

METHODS = ("adamw", "sam-adamw", "sassha-authors-loop", "sassha", "msassha")
REPO = pathlib.Path(__file__).resolve().parents[1]


def spec(model: TrainModel, method: str, device: torch.device, profile: Profile) -> dict:
    return dict(model=model.model, model_kwargs=model.model_kwargs, batch=model.batch,
                method=method, device=str(device), warmup=profile.train_warmup,
                windows=profile.train_windows, lazy_hessian=profile.lazy_hessian, seed=0)


def run_worker(job_spec: dict, timeout_s: float = 1800) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    done = subprocess.run([sys.executable, "-m", "bench.train_worker", json.dumps(job_spec)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"training worker failed ({job_spec['model']}, {job_spec['method']}, "
                           f"exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def run_method(model: TrainModel, method: str, device: torch.device, profile: Profile) -> dict:
    result = run_worker(spec(model, method, device, profile))
    means = result["window_means_s"]
    return dict(suite="train", workload=f"{model.label} batch {model.batch}",
                params=result["params"], tensors=result["tensors"], dtype="float32",
                method=method, backend=result["backend"],
                median_ms=statistics.median(means) * 1e3, min_ms=min(means) * 1e3,
                max_ms=max(means) * 1e3, reps=len(means),
                iter_min_ms=min(result["iteration_s"]) * 1e3,
                iter_max_ms=max(result["iteration_s"]) * 1e3,
                peak_mem_mb=result["peak_mem_mb"], mem_delta_mb=result["mem_delta_mb"],
                memory_measure=result["memory_measure"])
