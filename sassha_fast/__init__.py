"""sassha_fast: SASSHA and M-SASSHA with fused multi-tensor kernels."""
from .backends import available_backends
from .msassha import MSASSHA
from .sassha import SASSHA

__all__ = ["SASSHA", "MSASSHA", "available_backends"]
__version__ = "0.1.0"
