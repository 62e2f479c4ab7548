"""How each optimizer corrects its averages for their zero start, as the authors' code does.

The first correction is ``1 - beta1^t`` over the step count t. The second is computed at a
Hessian step from the step count then and kept until the next one (the average of |h| moves
only then): SASSHA stores it with the Hessian power of that step, M-SASSHA stores
``1 - beta2^t`` and raises it to the power of the step that uses it, and the authors'
language-model variant has neither. A policy also rebuilds the stored value for a checkpoint
of the authors' code, which does not save it.
"""
from typing import Callable, Optional, Tuple

from .buckets import Bucket


def last_hessian_step(step: int, lazy_hessian: int) -> int:
    """The last step t <= ``step`` that updated the Hessian average ((t - 1) % k == 0), or 0."""
    return 0 if step < 1 else (step - 1) // lazy_hessian * lazy_hessian + 1


class SasshaCorrection:
    """SASSHA: ``(1 - beta2^t)^power`` stored at each Hessian step."""

    has_second = True  # the state keeps a second correction

    @staticmethod
    def stored(beta2: float, power: float) -> Optional[Callable]:
        """What a Hessian step stores, from the new step count (None: nothing)."""
        return lambda step: (1 - beta2 ** step) ** power

    @staticmethod
    def for_update(bucket: Bucket, beta1: float, power: float) -> Tuple:
        """(bias_correction1, bias_correction2) as the update op takes them."""
        return bucket.scalar(bucket.bias_correction1(beta1)), bucket.scalar(bucket.bias_correction2)

    @staticmethod
    def as_used(beta1: float, state: dict, power: float) -> Tuple[float, float]:
        """(bc1, bc2) of a parameter's last update, read from its state (on the device path
        this waits for the device: for diagnostics only)."""
        return 1 - beta1 ** float(state["step"]), float(state["bias_correction2"])

    @staticmethod
    def for_authors_checkpoint(step: int, beta2: float, lazy_hessian: int) -> Optional[float]:
        raise ValueError("the checkpoint's state has a step but no bias_correction2")


class MsasshaCorrection:
    """M-SASSHA: ``1 - beta2^t`` stored at each Hessian step, raised to the step's power
    when used (the authors keep it in a module global)."""

    has_second = True

    @staticmethod
    def stored(beta2: float, power: float) -> Optional[Callable]:
        return lambda step: 1 - beta2 ** step

    @staticmethod
    def for_update(bucket: Bucket, beta1: float, power: float) -> Tuple:
        return (bucket.scalar(bucket.bias_correction1(beta1)),
                bucket.scalar(bucket.bias_correction2 ** power))

    @staticmethod
    def as_used(beta1: float, state: dict, power: float) -> Tuple[float, float]:
        return 1 - beta1 ** float(state["step"]), float(state["bias_correction2"]) ** power

    @staticmethod
    def for_authors_checkpoint(step: int, beta2: float, lazy_hessian: int) -> Optional[float]:
        return 1 - beta2 ** last_hessian_step(step, lazy_hessian)


class NoCorrection:
    """The authors' language-model SASSHA: no bias correction at all."""

    has_second = False

    @staticmethod
    def stored(beta2: float, power: float) -> Optional[Callable]:
        return None

    @staticmethod
    def for_update(bucket: Bucket, beta1: float, power: float) -> Tuple:
        return 1.0, 1.0

    @staticmethod
    def as_used(beta1: float, state: dict, power: float) -> Tuple[float, float]:
        return 1.0, 1.0

    @staticmethod
    def for_authors_checkpoint(step: int, beta2: float, lazy_hessian: int) -> Optional[float]:
        return None  # nothing to rebuild
