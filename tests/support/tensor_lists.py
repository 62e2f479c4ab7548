"""Helpers for the op tests, which compare whole lists of tensors."""
import torch


# The numerical contract of fused backends against the reference (docs/algorithm.md section 6).
STORED_TOLERANCE = {  # one rounding of a stored value may land on either neighbour
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.bfloat16: dict(rtol=2 ** -7, atol=1e-5),
    torch.float16: dict(rtol=2 ** -10, atol=1e-5),
    # Computed in double: a float32 computation anywhere would miss this by ~1e-7.
    torch.float64: dict(rtol=1e-12, atol=1e-12),
}
STATE_TOLERANCE = dict(rtol=1e-5, atol=1e-6)


def state_tolerance(param_dtype: torch.dtype) -> dict:
    """The tolerance of optimizer state, which is float64 for float64 parameters."""
    return STORED_TOLERANCE[torch.float64] if param_dtype == torch.float64 else STATE_TOLERANCE


def clone(tensors):
    return [t.clone() for t in tensors]


def assert_lists_close(actual, expected, **tolerance):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.dtype == e.dtype and a.shape == e.shape
        torch.testing.assert_close(a.cpu(), e.cpu(), **tolerance)


class PythonDispatched(torch.Tensor):
    """A tensor subclass dispatched to Python, as DTensor and FakeTensor are: it records
    the ops it receives (``seen``) and runs none."""
    seen = []

    @staticmethod
    def __new__(cls, data):
        return torch.Tensor._make_wrapper_subclass(cls, data.shape, dtype=data.dtype,
                                                   device=data.device)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        cls.seen.append(func)
