"""Tolerances scaled to the tensors compared: an absolute tolerance of a fixed size says
nothing about a tensor whose entries are all smaller than it (an all-zero estimate would
pass), so the tests that compare runs bound the difference relative to the largest entry of
the expected tensor, and prove the bound rejects a wrong tensor of the same scale."""
from typing import Iterable, Optional, Tuple

import torch
from torch import Tensor


def relative_difference(got: Tensor, want: Tensor, scale: Optional[float] = None) -> float:
    """max |got - want| / max |want| (or / ``scale``, the largest entry of a whole tensor of
    which ``want`` is a part)."""
    scale = float(want.detach().abs().max()) if scale is None else scale
    difference = float((got.detach().double() - want.detach().double()).abs().max())
    return difference / scale if scale > 0 else difference


def assert_scaled_close(got: Tensor, want: Tensor, rel: float,
                        scale: Optional[float] = None) -> None:
    """Every entry within ``rel`` times the largest expected entry (``scale``)."""
    if want.numel() == 0:
        assert got.shape == want.shape
        return
    scale = float(want.detach().abs().max()) if scale is None else scale
    torch.testing.assert_close(got, want, rtol=0, atol=rel * scale)


def scaled_close(triples: Iterable[Tuple[Tensor, Tensor, Optional[float]]],
                 rel: float) -> bool:
    """Whether every (got, want, scale) passes ``assert_scaled_close`` (for negative
    controls: a wrong ``got`` must make this False)."""
    try:
        for got, want, scale in triples:
            assert_scaled_close(got, want, rel, scale)
    except AssertionError:
        return False
    return True
