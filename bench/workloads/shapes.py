"""Parameter sets shaped like real models, for the optimizer-step and ops suites: the
shapes of every trainable tensor (BatchNorm weights and biases included, running
statistics not), filled with random values on demand."""
from typing import List, NamedTuple, Tuple

import torch
from torch import Tensor

Shape = Tuple[int, ...]


def resnet50_shapes(width_factor: int = 1, num_classes: int = 1000) -> List[Shape]:
    """ResNet-50 (width_factor 1: 25.6M parameters) or Wide-ResNet-50-k (bottleneck
    width times k; k = 2: 68.9M). 161 tensors either way."""
    shapes: List[Shape] = [(64, 3, 7, 7), (64,), (64,)]
    in_channels = 64
    for blocks, planes in zip((3, 4, 6, 3), (64, 128, 256, 512)):
        width, out = planes * width_factor, planes * 4
        for block in range(blocks):
            shapes += [(width, in_channels, 1, 1), (width,), (width,),
                       (width, width, 3, 3), (width,), (width,),
                       (out, width, 1, 1), (out,), (out,)]
            if block == 0:  # projection shortcut
                shapes += [(out, in_channels, 1, 1), (out,), (out,)]
            in_channels = out
    return shapes + [(num_classes, in_channels), (num_classes,)]


def gpt2_shapes(layers: int = 12, width: int = 768, vocab: int = 50257,
                context: int = 1024) -> List[Shape]:
    """GPT-2 small (layers 12: 124.4M parameters, 148 tensors; the head is tied)."""
    per_layer: List[Shape] = [(width,), (width,), (width, 3 * width), (3 * width,),
                              (width, width), (width,), (width,), (width,),
                              (width, 4 * width), (4 * width,), (4 * width, width), (width,)]
    return [(vocab, width), (context, width)] + per_layer * layers + [(width,), (width,)]


def scaled_shapes(shapes: List[Shape], total: int) -> List[Shape]:
    """The same tensors, flattened, each resized by one factor so the sum is ~``total``
    (every tensor keeps at least one element)."""
    current = sum(numel(s) for s in shapes)
    return [(max(1, round(numel(s) * total / current)),) for s in shapes]


def numel(shape: Shape) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


class ParamSet(NamedTuple):
    """Named shapes; ``materialize`` makes the tensors."""
    name: str
    shapes: Tuple[Shape, ...]

    @property
    def numel(self) -> int:
        return sum(numel(s) for s in self.shapes)

    @property
    def tensors(self) -> int:
        return len(self.shapes)


def random_tensors(shapes, device: torch.device, dtype: torch.dtype, std: float,
                   generator: torch.Generator, requires_grad: bool = False) -> List[Tensor]:
    out = []
    for shape in shapes:
        t = torch.randn(shape, generator=generator, device="cpu", dtype=torch.float32)
        t = t.mul_(std).to(device=device, dtype=dtype)
        out.append(t.requires_grad_(requires_grad))
    return out


def named_sets(gpt2_layers: int) -> List[ParamSet]:
    """The model-shaped sets (GPT-2 small cut to ``gpt2_layers`` blocks)."""
    gpt_name = "gpt2-small" if gpt2_layers == 12 else f"gpt2-small-{gpt2_layers}-layers"
    return [ParamSet("resnet50", tuple(resnet50_shapes())),
            ParamSet("wide-resnet50-2", tuple(resnet50_shapes(width_factor=2))),
            ParamSet(gpt_name, tuple(gpt2_shapes(layers=gpt2_layers)))]
