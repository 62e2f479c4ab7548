"""What docs/estimators.md says about F.scaled_dot_product_attention and the default
estimator's double backward on CPU: the fused kernel torch picks without dropout has none,
the math path (dropout > 0, or forced) has one."""
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

CASES = {  # name: (keyword arguments, math path forced, double backward works)
    "no dropout": ({}, False, False),
    "is_causal": ({"is_causal": True}, False, False),
    "float mask": ({"attn_mask": torch.zeros(8, 8)}, False, False),
    "dropout 0.1": ({"dropout_p": 0.1}, False, True),
    "math backend": ({}, True, True),
}


@pytest.mark.parametrize("case", CASES)
def test_sdpa_double_backward_on_cpu(case):
    kwargs, force_math, works = CASES[case]
    q, k, v = (torch.randn(2, 2, 8, 16, requires_grad=True) for _ in range(3))

    def second_derivative():
        out = F.scaled_dot_product_attention(q, k, v, **kwargs)
        g, = torch.autograd.grad(out.square().sum(), q, create_graph=True)
        return torch.autograd.grad(g.sum(), q)

    with sdpa_kernel(SDPBackend.MATH) if force_math else torch.enable_grad():
        if works:
            assert torch.isfinite(second_derivative()[0]).all()
        else:
            with pytest.raises(RuntimeError, match="derivative for .* is not implemented"):
                second_derivative()
