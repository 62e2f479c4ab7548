"""Counting the steps skipped for inf/NaN values, and saying so.

A warning (``SkippedStepWarning``) on the first skipped step and again each time the count
has doubled since the last warning; a ``FloatingPointError`` once ``max_consecutive`` steps in
a row were skipped: such a run learns nothing, and a warning scrolls past in a log where an
error stops the wasted compute (pass None to go on regardless).

On the host path the skip is known when it happens and is reported at once. On the device
path the counts live on the device, advanced by the found-inf flag without a host
synchronisation, and are read every ``check_interval`` steps (one synchronisation then),
whenever the user asks (``check()``, ``count``), and never while a CUDA graph is being
captured.
"""
import os
import sys
import warnings
from typing import Optional, Union

import torch
from torch import Tensor

Count = Union[int, Tensor]


class SkippedStepWarning(UserWarning):
    """Steps were skipped because gradients or Hessian estimates held inf or NaN."""


def capturing() -> bool:
    """Whether a CUDA graph is being captured on the current stream."""
    return torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the user's call: the first frame outside
    this package and torch (whose decorators wrap ``step``)."""
    inside = (os.path.dirname(os.path.abspath(__file__)),
              os.path.dirname(os.path.abspath(torch.__file__)))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(inside):
        frame, level = frame.f_back, level + 1
    return level


class SkipCounter:
    def __init__(self, check_interval: int, max_consecutive: Optional[int]):
        self.check_interval = check_interval
        self.max_consecutive = max_consecutive
        self._total: Count = 0
        self._run: Count = 0  # consecutive skipped steps up to the last one
        self._steps_since_check = 0
        self._warned_at = 0  # the count at the last warning

    def record(self, skipped: Union[bool, Tensor]) -> None:
        """One more attempted step, skipped or not (a bool, or a 0-d device flag)."""
        if isinstance(skipped, Tensor):
            flag = skipped.to(torch.int64)
            if not isinstance(self._total, Tensor):
                self._total = torch.tensor(self._total, dtype=torch.int64, device=flag.device)
                self._run = torch.tensor(self._run, dtype=torch.int64, device=flag.device)
            self._total.add_(flag)
            self._run.mul_(flag).add_(flag)  # reset by an applied step
        else:
            if isinstance(self._total, Tensor):  # back from the device path
                self._total, self._run = int(self._total), int(self._run)
            self._total += int(skipped)
            self._run = self._run + 1 if skipped else 0

    def tick(self) -> None:
        """After each step: report now on the host path, every ``check_interval`` steps on
        the device path."""
        self._steps_since_check += 1
        if not isinstance(self._total, Tensor) or (
                self._steps_since_check >= self.check_interval and not capturing()):
            self.check()

    @property
    def count(self) -> int:
        return int(self._total)

    def check(self) -> None:
        """Read the counts (one synchronisation on the device path) and report."""
        self._steps_since_check = 0
        if isinstance(self._total, Tensor):
            total, run = torch.stack([self._total, self._run]).tolist()
        else:
            total, run = self._total, self._run
        if total > self._warned_at and (self._warned_at == 0 or total >= 2 * self._warned_at):
            warnings.warn(
                f"{total} optimizer step(s) skipped so far: gradients or Hessian estimates held "
                "inf or NaN (optimizer.skipped_steps counts them; nonfinite='raise' names the "
                "first offending tensor). Warned again when the count doubles.",
                SkippedStepWarning, stacklevel=_caller_stacklevel())
            self._warned_at = total
        if self.max_consecutive is not None and run >= self.max_consecutive:
            raise FloatingPointError(
                f"the last {run} optimizer steps were all skipped (inf or NaN in the gradients "
                f"or Hessian estimates; {total} skipped in all): the parameters no longer move. "
                "nonfinite='raise' names the first offending tensor; max_consecutive_skips=None "
                "lets the run go on")

    def state_dict(self) -> dict:
        return {"skipped_steps": self.count}

    def load_state_dict(self, saved: dict) -> None:
        """The count goes on from the checkpoint's; warnings resume from there."""
        self._total = self._warned_at = int(saved.get("skipped_steps", 0))
        self._run = 0
        self._steps_since_check = 0
