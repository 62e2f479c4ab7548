"""A timm Vision Transformer trained with SASSHA: timm's attention calls
F.scaled_dot_product_attention, whose fused kernels have no double backward, so the
Hessian estimate comes from finite differences (hessian_estimator="finite_difference").
The model is built from its configuration (pretrained=False: nothing is downloaded); the
data is a fixed synthetic batch, to keep the example self-contained.

    python examples/timm_vit.py
"""
import timm
import torch
from torch import nn

import sassha_fast


def main(steps: int = 20):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                              patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)
    images, labels = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    opt = sassha_fast.SASSHA(model.parameters(), lr=0.15, rho=0.05, weight_decay=1e-4,
                             lazy_hessian=2, hessian_estimator="finite_difference")
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for _ in range(steps):
        losses.append(float(opt.step(lambda: loss_fn(model(images), labels))))
    return losses


if __name__ == "__main__":
    losses = main()
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
