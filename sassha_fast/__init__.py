"""sassha_fast: SASSHA and M-SASSHA with fused multi-tensor kernels."""
from .backends import available_backends
from .batchnorm import frozen_batchnorm_stats
from .finite_difference import capture_rng_state
from .lm import LanguageModelSASSHA
from .msassha import MSASSHA
from .sassha import SASSHA

__all__ = ["SASSHA", "MSASSHA", "LanguageModelSASSHA", "available_backends",
           "capture_rng_state",
           "frozen_batchnorm_stats"]
__version__ = "0.1.0"
