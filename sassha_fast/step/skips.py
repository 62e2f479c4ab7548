"""Counting the steps skipped for inf/NaN values, and the updates that wrote inf/NaN, and
saying so.

A warning (``SkippedStepWarning``) on the first skipped step and again each time the count
has doubled since the last warning; a ``FloatingPointError`` once ``max_consecutive`` steps in
a row were skipped: such a run learns nothing, and a warning scrolls past in a log where an
error stops the wasted compute (pass None to go on regardless).

On the host path the skip is known when it happens and is reported at once. On the device
path the counts live on the device, advanced by the found-inf flag without a host
synchronisation. Every ``check_interval`` steps ``tick()`` starts a copy of them to the host
that does not wait (``HostCopy``) and reports them at the first ``tick()`` that finds the
copy landed: the same step on the CPU, where the copy is done when it returns; a later one
on a CUDA device, where it is queued behind the step's kernels into pinned memory. The host
never waits for the device there. ``check()`` and ``count`` (the user asking) read the
counts at once, which waits for the device; nothing is copied, read or reported while a
CUDA graph is being captured.

The updates that stored inf or NaN (the update ops' ``wrote_nonfinite`` flag: nothing before
the update could see it coming, an overflowing step or a non-finite learning rate) are
counted the same way, on the host or on the device, and each new one is reported by a
``NonfiniteUpdateWarning`` naming the tensor (``Locate``, called then; it reads the state).
"""
import os
import sys
import warnings
from typing import Callable, List, Optional, Union

import torch
from torch import Tensor

from .capture import capturing

Count = Union[int, Tensor]
# What the optimizer can say about the skips when a report is made: called with whether the
# run is being stopped, it returns a text to append (it may read the device only then).
Explain = Optional[Callable[[bool], str]]
# Where the parameters or state hold inf or NaN, as a text (reads them: called to report only).
Locate = Optional[Callable[[], str]]


def any_set(flags: List[Tensor], home: torch.device) -> Tensor:
    """Whether any of the per-device flags (0-d or one-element float32 tensors, one per
    device) is nonzero, as one 0-d tensor on ``home``; no host synchronisation."""
    on_home = [flag.reshape(()).to(home) for flag in flags]
    return on_home[0] if len(on_home) == 1 else torch.stack(on_home).amax()


class SkippedStepWarning(UserWarning):
    """Steps were skipped because gradients or Hessian estimates held inf or NaN."""


class NonfiniteUpdateWarning(UserWarning):
    """An update wrote inf or NaN into a parameter or the optimizer state."""


UPDATE_WROTE_NONFINITE = (
    "The gradients and Hessian estimates were finite: the values came from the update "
    "itself (a step that overflowed the parameter's dtype, a learning rate that is not "
    "finite, or optimizer state that was not) and are in the parameters now; load the last "
    "good checkpoint (load_state_dict refuses state that is not finite)")


def caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the user's call: the first frame outside
    this package and torch (whose decorators wrap ``step``)."""
    inside = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
              os.path.dirname(os.path.abspath(torch.__file__)))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(inside):
        frame, level = frame.f_back, level + 1
    return level


class HostCopy:
    """A copy of a 1-d int64 device tensor to host memory that never makes the host wait.

    On a CUDA device the copy goes into a pinned buffer, queued on the current stream
    (behind the kernels that computed the values), and an event says when it has landed. On
    the CPU the copy is done when ``start`` returns; it goes into a ``bytearray`` read
    through a ``memoryview``, host memory by construction. Another device (no pinned
    memory or events here) copies synchronously: ``start`` waits there."""

    def __init__(self):
        self._host: Optional[Tensor] = None
        self._buffer: Optional[bytearray] = None
        self._landed = None  # a torch.cuda.Event while a CUDA copy is under way

    def start(self, values: Tensor) -> None:
        if values.device.type == "cuda":
            if self._host is None or self._host.numel() != values.numel():
                self._host = torch.empty(values.shape, dtype=torch.int64, pin_memory=True)
            self._host.copy_(values, non_blocking=True)
            self._landed = torch.cuda.Event()
            self._landed.record(torch.cuda.current_stream(values.device))
            return
        if self._buffer is None or len(self._buffer) != 8 * values.numel():
            self._buffer = bytearray(8 * values.numel())
        torch.frombuffer(self._buffer, dtype=torch.int64).copy_(values)

    def landed(self) -> bool:
        """Whether ``values()`` can be read without waiting (never waits itself)."""
        return self._landed is None or self._landed.query()

    def values(self) -> List[int]:
        if self._landed is not None:
            self._landed = None
            return self._host.tolist()  # pinned host memory: no device read
        return list(memoryview(self._buffer).cast("q"))


class SkipCounter:
    def __init__(self, check_interval: int, max_consecutive: Optional[int]):
        self.check_interval = check_interval
        self.max_consecutive = max_consecutive
        self._total: Count = 0
        self._run: Count = 0  # consecutive skipped steps up to the last one
        self._written: Count = 0  # updates that stored inf or NaN
        self._written_reported = 0
        self._steps_since_check = 0
        self._warned_at = 0  # the count at the last warning
        self._copy = HostCopy()
        self._copying = False  # a copy of the device counts is on its way to the host

    def record(self, skipped: Union[bool, Tensor]) -> None:
        """One more attempted step, skipped or not (a bool, or a 0-d device flag)."""
        if isinstance(skipped, Tensor):
            flag = skipped.to(torch.int64)
            self._on_device(flag.device)
            self._total.add_(flag)
            self._run.mul_(flag).add_(flag)  # reset by an applied step
        else:
            self._on_host()
            self._total += int(skipped)
            self._run = self._run + 1 if skipped else 0

    def record_written(self, wrote_nonfinite: Union[bool, Tensor]) -> None:
        """Whether an applied update stored inf or NaN (a bool, or a 0-d device flag)."""
        if isinstance(wrote_nonfinite, Tensor):
            self._on_device(wrote_nonfinite.device)
            self._written.add_(wrote_nonfinite.to(torch.int64))
        else:
            self._on_host()
            self._written += int(wrote_nonfinite)

    def _on_device(self, device: torch.device) -> None:
        if not isinstance(self._total, Tensor):
            self._total, self._run, self._written = (
                torch.tensor(value, dtype=torch.int64, device=device)
                for value in (self._total, self._run, self._written))

    def _on_host(self) -> None:
        if isinstance(self._total, Tensor):  # back from the device path
            self._total, self._run, self._written = (
                int(value) for value in (self._total, self._run, self._written))

    def tick(self, explain: Explain = None, locate: Locate = None) -> None:
        """After each step: report now on the host path; on the device path start a copy
        of the counts every ``check_interval`` steps and report it once it has landed."""
        self._steps_since_check += 1
        if not isinstance(self._total, Tensor):
            self.check(explain, locate)
            return
        if capturing():  # a copy or an event query would be captured or refused
            return
        if not self._copying and self._steps_since_check >= self.check_interval:
            self._steps_since_check = 0
            self._copy.start(torch.stack([self._total, self._run, self._written]))
            self._copying = True
        if self._copying and self._copy.landed():
            self._copying = False
            self._report(*self._copy.values(), explain, locate)

    @property
    def count(self) -> int:
        return int(self._total)

    @property
    def written_count(self) -> int:
        return int(self._written)

    def check(self, explain: Explain = None, locate: Locate = None) -> None:
        """Read the counts now (on the device path: waits for the device) and report."""
        self._steps_since_check = 0
        self._copying = False  # older than what is read now
        if isinstance(self._total, Tensor):
            total, run, written = torch.stack([self._total, self._run, self._written]).tolist()
        else:
            total, run, written = self._total, self._run, self._written
        self._report(total, run, written, explain, locate)

    @torch.compiler.disable  # host work (warnings, the caller's frame): never traced
    def _report(self, total: int, run: int, written: int, explain: Explain,
                locate: Locate) -> None:
        if written > self._written_reported:
            where = locate() if locate is not None else ""
            warnings.warn(
                f"{written - self._written_reported} optimizer update(s) wrote inf or NaN "
                f"({written} so far): {where}. {UPDATE_WROTE_NONFINITE}. "
                "nonfinite='raise' stops at the step that writes them.",
                NonfiniteUpdateWarning, stacklevel=caller_stacklevel())
            self._written_reported = written
        stopping = self.max_consecutive is not None and run >= self.max_consecutive
        warn = total > self._warned_at and (self._warned_at == 0 or total >= 2 * self._warned_at)
        cause = explain(stopping) if explain is not None and (warn or stopping) else ""
        if warn:
            warnings.warn(
                f"{total} optimizer step(s) skipped so far: gradients or Hessian estimates held "
                "inf or NaN (optimizer.skipped_steps counts them; nonfinite='raise' names the "
                "first offending tensor)." + cause + " Warned again when the count doubles.",
                SkippedStepWarning, stacklevel=caller_stacklevel())
            self._warned_at = total
        if stopping:
            raise FloatingPointError(
                f"the last {run} optimizer steps were all skipped (inf or NaN in the gradients "
                f"or Hessian estimates; {total} skipped in all): the parameters no longer move."
                + cause + " nonfinite='raise' stops at the first offending tensor; "
                "max_consecutive_skips=None lets the run go on")

    def state_dict(self) -> dict:
        return {"skipped_steps": self.count, "nonfinite_updates": self.written_count}

    def load_state_dict(self, saved: dict) -> None:
        """The counts go on from the checkpoint's; warnings resume from there."""
        self._total = self._warned_at = int(saved.get("skipped_steps", 0))
        self._written = self._written_reported = int(saved.get("nonfinite_updates", 0))
        self._run = 0
        self._steps_since_check = 0
        self._copying = False
