"""scikit-learn's handwritten digits (1,797 8x8 images, 10 classes, shipped inside the
package: nothing is downloaded), in two splits. The quality suite's (``make_split``): a
clean test set and a training set whose labels get symmetric noise, a held-out slice of it
choosing each method's learning rate. The curvature studies' (``random_label_split``): a
fixed training set whose labels are redrawn at random, per seed, and a clean held-out
rest."""
from typing import NamedTuple, Tuple

import torch
from torch import Tensor

CLASSES = 10
RANDOM_LABEL_TRAIN = 1257  # random_label_split's training images (the other 540 held out)


class Split(NamedTuple):
    fit_x: Tensor       # training inputs (N, 1, 8, 8), standardised
    fit_y: Tensor       # their labels, noisy
    val_x: Tensor       # held-out slice of the training set: chooses the learning rate
    val_y: Tensor       # noisy too (a user with noisy labels has no clean ones to tune on)
    test_x: Tensor
    test_y: Tensor      # clean
    noise: float
    flipped: int        # training labels (fit + val) changed by the noise


def load_digits_tensors():
    """(images (N, 1, 8, 8) in [0, 1], labels (N,)) from scikit-learn."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise RuntimeError("the digits need scikit-learn (pip install scikit-learn; it is in "
                           "the bench extra: pip install \".[bench]\")") from exc
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return images, torch.tensor(digits.target, dtype=torch.long)


def symmetric_noise(labels: Tensor, rate: float, generator: torch.Generator) -> Tensor:
    """A copy of ``labels`` in which round(rate * N) of them, chosen at random, are
    replaced by a class drawn uniformly among the other CLASSES - 1 (so exactly that
    fraction is wrong)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"label noise rate must be in [0, 1), got {rate}")
    noisy = labels.clone()
    count = round(rate * len(labels))
    chosen = torch.randperm(len(labels), generator=generator)[:count]
    shift = torch.randint(1, CLASSES, (count,), generator=generator)
    noisy[chosen] = (labels[chosen] + shift) % CLASSES
    return noisy


def make_split(noise: float, test_fraction: float = 0.3, val_fraction: float = 0.2,
               seed: int = 0, limit: int = 0) -> Split:
    """The same clean test / train split for every noise level (``seed``); the noise is
    drawn on the training labels only. ``limit`` > 0 keeps that many images (tests)."""
    images, labels = load_digits_tensors()
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    if limit:
        order = order[:limit]
    n_test = round(test_fraction * len(order))
    test, train = order[:n_test], order[n_test:]
    n_val = round(val_fraction * len(train))
    mean, std = images[train].mean(), images[train].std()
    images = (images - mean) / std
    noise_generator = torch.Generator().manual_seed(seed + 1 + round(1000 * noise))
    train_labels = symmetric_noise(labels[train], noise, noise_generator)
    flipped = int((train_labels != labels[train]).sum())
    return Split(images[train[n_val:]], train_labels[n_val:], images[train[:n_val]],
                 train_labels[:n_val], images[test], labels[test], noise, flipped)


def random_label_split(noise: float, seed: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train x, noisy train y, test x, test y): the split is fixed, the noise per seed
    (each training label, with probability ``noise``, redrawn uniformly among all classes)."""
    x, y = load_digits_tensors()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))
    x, y = x[order], y[order]
    y_train = y[:RANDOM_LABEL_TRAIN].clone()
    generator = torch.Generator().manual_seed(seed)
    flip = torch.rand(RANDOM_LABEL_TRAIN, generator=generator) < noise
    y_train[flip] = torch.randint(0, CLASSES, (int(flip.sum()),), generator=generator)
    return x[:RANDOM_LABEL_TRAIN], y_train, x[RANDOM_LABEL_TRAIN:], y[RANDOM_LABEL_TRAIN:]
