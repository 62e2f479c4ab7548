"""Where and when a run happened, stored with its results."""
import datetime
import os
import pathlib
import platform
import re
import subprocess
import sys

import torch

import sassha_fast

REPO = pathlib.Path(__file__).resolve().parents[2]


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def commit() -> str:
    """HEAD, with "+dirty" when tracked sources (not results) differ from it."""
    head = _git("rev-parse", "HEAD") or "unknown"
    changed = [line for line in _git("status", "--porcelain", "--untracked-files=no")
               .splitlines() if "bench/results/" not in line]
    return head + ("+dirty" if changed else "")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def device_kind(device: torch.device) -> str:
    """A folder name for the device: "cpu", or the GPU's name in lower case."""
    if device.type != "cuda":
        return device.type
    return re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")


def proc_status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory_mb(device: torch.device) -> float:
    """This process's peak so far: torch's allocator on CUDA, else the resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return proc_status_bytes("VmHWM") / 2**20


def collect(device: torch.device) -> dict:
    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        device=str(device), device_name=device_name(device), device_kind=device_kind(device),
        cpu=cpu_name(), cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
        torch=torch.__version__, cuda=torch.version.cuda, python=sys.version.split()[0],
        sassha_fast=sassha_fast.__version__, commit=commit(),
        load_average_before=os.getloadavg(), argv=sys.argv[1:])
