"""sassha_fast: SASSHA and M-SASSHA with fused multi-tensor kernels."""
from ._version import __version__
from .backends import available_backends
from .batchnorm import frozen_batchnorm_stats
from .extension import build_info
from .finite_difference import capture_rng_state
from .lm import LanguageModelSASSHA
from .msassha import MSASSHA
from .sassha import SASSHA

__all__ = ["SASSHA", "MSASSHA", "LanguageModelSASSHA", "available_backends", "build_info",
           "capture_rng_state", "frozen_batchnorm_stats"]
