"""The models of the suites and studies, written small. By default every layer supports the
double backward that SASSHA's default Hessian estimator needs (attention written out by
hand); ``GPTConfig(attention="sdpa")`` uses ``F.scaled_dot_product_attention`` instead,
which has no double backward (first-order methods and the finite-difference estimator only)."""
import math
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .digits import CLASSES


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm; a 1x1 projection when the shape changes."""

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images: three stages of n basic blocks (16, 32, 64 channels)."""

    def __init__(self, depth: int = 32, num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())
        layers, in_channels = [], 16
        for stage, channels in enumerate((16, 32, 64)):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(in_channels, channels, stride))
                in_channels = channels
        self.stages = nn.Sequential(*layers)
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.stages(self.stem(x))
        return self.head(F.adaptive_avg_pool2d(out, 1).flatten(1))


def bn_cnn(num_classes: int = 10) -> nn.Sequential:
    """A small CNN with BatchNorm and GELU (smooth: the double backward and a difference of
    gradients estimate the same curvature, unlike ReLU's kinks)."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.GELU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32),
                         nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, num_classes))


class SmallCNN(nn.Module):
    """Three 3x3 convolutions with BatchNorm for 8x8 digits (~15k parameters): the quality
    suite's model."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width),
            nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width), nn.ReLU())
        self.head = nn.Linear(2 * width, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def digits_fc_net(kind: str) -> nn.Module:
    """For 8x8 digits: two 3x3 convolutions, a 2x2 max-pool, a hidden FC layer (64) and the
    classifier; ``kind`` "relu-fc" (units dead on a batch give exactly zero Hessian
    entries) or "tanh-fc" (no dead units)."""
    act = {"relu-fc": nn.ReLU, "tanh-fc": nn.Tanh}[kind]
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), act(),
                         nn.Conv2d(16, 32, 3, padding=1), act(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(512, 64), act(), nn.Linear(64, CLASSES))


class GPTConfig(NamedTuple):
    layers: int = 4
    width: int = 256
    heads: int = 4
    vocab: int = 4096
    context: int = 128
    attention: str = "manual"  # "manual" (softmax written out, O(T^2) memory) or "sdpa"
    # False: an output layer of its own, so that an embedding row gets a gradient only from
    # batches holding its token (bench/studies/zero_curvature.py)
    tied: bool = True


ATTENTIONS = ("manual", "sdpa")


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention, causal unless ``causal=False`` (the ViT's)."""

    def __init__(self, config, causal: bool = True):
        super().__init__()
        if config.width % config.heads:
            raise ValueError("width must be a multiple of heads")
        if config.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {config.attention!r}")
        self.heads = config.heads
        self.sdpa = config.attention == "sdpa"
        self.causal = causal
        self.qkv = nn.Linear(config.width, 3 * config.width)
        self.proj = nn.Linear(config.width, config.width)
        if causal and not self.sdpa:
            mask = torch.ones(config.context, config.context, dtype=torch.bool).triu(1)
            self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        if self.sdpa:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
            return self.proj(out.transpose(1, 2).reshape(batch, length, width))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        if self.causal:
            scores = scores.masked_fill(self.mask[:length, :length], float("-inf"))
        out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))


class TransformerBlock(nn.Module):
    def __init__(self, config, causal: bool = True):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.width)
        self.attn = CausalSelfAttention(config, causal)
        self.ln2 = nn.LayerNorm(config.width)
        self.mlp = nn.Sequential(nn.Linear(config.width, 4 * config.width), nn.GELU(),
                                 nn.Linear(4 * config.width, config.width))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """A pre-LayerNorm decoder-only language model with learned positions and a tied head
    (``config.tied``; else a head of its own)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.tokens = nn.Embedding(config.vocab, config.width)
        self.positions = nn.Embedding(config.context, config.width)
        self.blocks = nn.Sequential(*(TransformerBlock(config) for _ in range(config.layers)))
        self.ln = nn.LayerNorm(config.width)
        # Small embeddings (GPT-2's 0.02) keep the tied head's first logits near zero.
        for embedding in (self.tokens, self.positions):
            nn.init.normal_(embedding.weight, std=0.02)
        self.head = None if config.tied else nn.Linear(config.width, config.vocab, bias=False)

    def forward(self, idx: Tensor) -> Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.ln(self.blocks(self.tokens(idx) + self.positions(positions)))
        return x @ self.tokens.weight.t() if self.head is None else self.head(x)


class ViTConfig(NamedTuple):
    image: int = 16
    patch: int = 4
    channels: int = 3
    layers: int = 2
    width: int = 64
    heads: int = 4
    classes: int = 10
    attention: str = "sdpa"  # as timm's and torchvision's ViTs; "manual" has a double backward


class ViT(nn.Module):
    """A small vision transformer: a convolutional patch embedding, a class token, learned
    positions, pre-LayerNorm blocks with (non-causal) self-attention, a linear head."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        if config.image % config.patch:
            raise ValueError("image size must be a multiple of the patch size")
        self.config = config
        self.patches = nn.Conv2d(config.channels, config.width, config.patch, config.patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, config.width))
        self.positions = nn.Parameter(
            0.02 * torch.randn(1, (config.image // config.patch) ** 2 + 1, config.width))
        self.blocks = nn.Sequential(*(TransformerBlock(config, causal=False)
                                      for _ in range(config.layers)))
        self.ln = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, config.classes)

    def forward(self, images: Tensor) -> Tensor:
        x = self.patches(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.positions
        return self.head(self.ln(self.blocks(x))[:, 0])


def build_model(spec: dict, device: torch.device, generator: torch.Generator):
    """A training-suite model (``spec``: "model", "model_kwargs", "batch", optionally
    "compile"), one synthetic batch and the loss function."""
    batch = spec["batch"]
    if spec["model"] == "cifar_resnet":
        model = CifarResNet(**spec["model_kwargs"])
        x = torch.randn(batch, 3, 32, 32, generator=generator)
        y = torch.randint(0, 10, (batch,), generator=generator)
        loss_fn = F.cross_entropy
    elif spec["model"] == "gpt":
        config = GPTConfig(**spec["model_kwargs"])
        model = GPT(config)
        x = torch.randint(0, config.vocab, (batch, config.context), generator=generator)
        y = torch.randint(0, config.vocab, (batch, config.context), generator=generator)

        def loss_fn(logits, targets):
            return F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    else:
        raise ValueError(f"unknown model {spec['model']!r}")
    model = model.to(device).train()
    if spec.get("compile"):
        # Compiled on the first (warm-up) iterations, so compile time is never timed.
        model = torch.compile(model)
    return model, x.to(device), y.to(device), loss_fn
