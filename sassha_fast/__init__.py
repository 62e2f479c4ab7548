"""sassha_fast: SASSHA and M-SASSHA with fused multi-tensor kernels."""
from ._version import __version__
from .backends import available_backends
from .backends.extension import build_info
from .hessian.finite_difference import capture_rng_state
from .optim.checkpointing import CheckpointError
from .optim.language_model import LanguageModelSASSHA
from .optim.msassha import MSASSHA
from .optim.sassha import SASSHA
from .step.batchnorm import frozen_batchnorm_stats
from .step.skips import NonfiniteUpdateWarning, SkippedStepWarning

__all__ = ["SASSHA", "MSASSHA", "LanguageModelSASSHA", "available_backends", "build_info",
           "capture_rng_state", "frozen_batchnorm_stats", "SkippedStepWarning",
           "NonfiniteUpdateWarning", "CheckpointError"]
