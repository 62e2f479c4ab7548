"""Whether a CUDA graph is being captured: while one is, nothing may read the device on the
host, start a copy or draw from an unregistered generator (see ``sassha_fast.cuda_graphs``)."""
import torch


def capturing() -> bool:
    """Whether a CUDA graph is being captured on the current stream."""
    return torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()
