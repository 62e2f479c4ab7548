"""A torchvision ResNet-18 (BatchNorm, convolutions) trained with M-SASSHA under the default
estimator (the double backward runs through convolutions and BatchNorm), validated at the
clean point. The model is built without weights (weights=None: nothing is downloaded); the
data is a fixed synthetic batch, to keep the example self-contained.

    python examples/torchvision_resnet.py
"""
import torch
import torchvision
from torch import nn

import sassha_fast


def main(steps: int = 10):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    images, labels = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    opt = sassha_fast.MSASSHA(model.parameters(), lr=0.05, rho=0.05, weight_decay=1e-4,
                              lazy_hessian=2, hessian_power=0.5)
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for _ in range(steps):
        model.train()
        opt.step(lambda: loss_fn(model(images), labels))
        model.eval()
        with opt.evaluation(), torch.no_grad():  # M-SASSHA's weights at the clean point
            losses.append(float(loss_fn(model(images), labels)))
    return losses


if __name__ == "__main__":
    losses = main()
    print(f"validation loss {losses[0]:.3f} -> {losses[-1]:.3f}")
