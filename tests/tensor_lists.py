"""Helpers for the op tests, which compare whole lists of tensors."""
import torch


def clone(tensors):
    return [t.clone() for t in tensors]


def assert_lists_close(actual, expected, **tolerance):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.dtype == e.dtype and a.shape == e.shape
        torch.testing.assert_close(a.cpu(), e.cpu(), **tolerance)
