"""Multi-process runs started the way users start them: ``torchrun`` or ``accelerate
launch`` runs a worker script on WORLD gloo processes on this machine (localhost, a free
port), each worker saves what it returns with ``save_rank_result``, and ``launch`` returns
that from every rank, in rank order. The launcher's whole process group is killed when it
overruns its time."""
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
from typing import Any, List, Sequence

import torch

WORLD = 2
SUPPORT = pathlib.Path(__file__).resolve().parent
REPO = SUPPORT.parents[1]
_RESULTS = "SASSHA_RANK_RESULTS"  # where each worker saves its result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(launcher: str, port: int) -> List[str]:
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
                "--master_addr", "127.0.0.1", "--master_port", str(port)]
    if launcher == "accelerate":
        # --multi_gpu is accelerate's name for its torchrun launcher; without a GPU its
        # processes take gloo on CPU (--cpu would start one process).
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                "--num_processes", str(WORLD), "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_ip", "127.0.0.1", "--main_process_port", str(port)]
    raise ValueError(f"unknown launcher {launcher!r}")


def launch(launcher: str, script: str, args: Sequence[str] = (),
           timeout: float = 300) -> List[Any]:
    """Runs ``tests/support/<script>`` under ``launcher`` ("torchrun" or "accelerate") and
    returns each rank's saved result; fails with the processes' output when a rank fails or
    the run overruns ``timeout`` seconds."""
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(REPO), str(SUPPORT), os.environ.get("PYTHONPATH", "")]),
            # No accelerate config of this machine's user, nothing cached from the hub.
            HF_HOME=out, **{_RESULTS: out})
        env.pop("ACCELERATE_USE_FSDP", None)
        command = _command(launcher, _free_port()) + [str(SUPPORT / script), *args]
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the launcher and the workers it started
            output, _ = process.communicate()
            raise AssertionError(f"{launcher} {script} overran {timeout} s:\n{output[-6000:]}")
        if process.returncode != 0:
            raise AssertionError(f"{launcher} {script} failed ({process.returncode}):\n"
                                 f"{output[-6000:]}")
        return [torch.load(os.path.join(out, f"rank{rank}.pt"), weights_only=False)
                for rank in range(WORLD)]


def save_rank_result(result: Any) -> None:
    """In a worker: what ``launch`` returns for this rank."""
    torch.save(result, os.path.join(os.environ[_RESULTS], f"rank{os.environ['RANK']}.pt"))
