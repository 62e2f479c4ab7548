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


def main(steps: int = 30):
    torch.manual_seed(0)
    # A small ViT (16 patches of 4x4 pixels, one block) so that it runs in seconds on a CPU.
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16,
                              patch_size=4, embed_dim=32, depth=1, num_heads=2, num_classes=10)
    images, labels = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    opt = sassha_fast.SASSHA(model.parameters(), lr=0.3, rho=0.05, weight_decay=1e-4,
                             lazy_hessian=2, hessian_estimator="finite_difference")
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for _ in range(steps):
        losses.append(float(opt.step(lambda: loss_fn(model(images), labels))))
    return losses


if __name__ == "__main__":
    losses = main()
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
