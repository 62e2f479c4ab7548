"""LightningModules running SASSHA / M-SASSHA under ``SasshaLightningMixin`` (automatic
optimization, the authors' manual loop, and the manual loop with micro-batches and
clipping), their data and ``fit``: shared by the Lightning tests in one process and the
worker that runs them on several (lightning_worker.py)."""
import pytorch_lightning as pl
import torch
from torch import nn

from sassha_fast import MSASSHA, SASSHA
from sassha_fast.integrations.lightning import SasshaLightningMixin

LOSS = nn.CrossEntropyLoss()
FD = dict(hessian_estimator="finite_difference")
SETTINGS = {SASSHA: dict(lr=0.15, rho=0.05, lazy_hessian=2),
            MSASSHA: dict(lr=0.15, rho=0.05, lazy_hessian=2, hessian_power=0.5)}
BATCHES = 4  # per epoch, of 16 examples
CLIP = 0.05  # below the gradients' norms (about 0.3-1): every step is clipped


def data(batch=16):
    """BATCHES * 16 examples in batches of ``batch``: ``data(32)[k]`` is ``data()[2 k]`` and
    ``data()[2 k + 1]`` together."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(16 * BATCHES, 5, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]


def make_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))


class Automatic(SasshaLightningMixin, pl.LightningModule):
    def __init__(self, optimizer=SASSHA, **kwargs):
        super().__init__()
        self.net = make_net()
        self.optimizer_kwargs = (optimizer, {**SETTINGS[optimizer], **kwargs})
        self.logged = []  # what Lightning recorded for each batch
        self.training_steps = 0

    def training_step(self, batch, batch_idx):
        self.training_steps += 1
        loss = LOSS(self.net(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.logged.append((float(self.trainer.callback_metrics["train_loss"]),
                            float(outputs["loss"])))

    def configure_optimizers(self):
        optimizer, kwargs = self.optimizer_kwargs
        return optimizer(self.parameters(), **kwargs)


class Manual(Automatic):
    """The authors' loop on self.optimizers(), either estimator."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        x, y = batch
        self.manual_backward(LOSS(self.net(x), y))
        opt.perturb_weights(zero_grad=True)
        if opt.hessian_estimator == "autograd":
            self.manual_backward(LOSS(self.net(x), y), create_graph=opt.hessian_due)
        else:
            self.manual_backward(LOSS(self.net(x), y))
            for _ in opt.hessian_probes():
                self.manual_backward(LOSS(self.net(x), y))
        opt.unperturb()
        opt.step()
        opt.zero_grad()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        pass  # nothing logged


class ManualAccumulating(Manual):
    """The documented manual loop: two micro-batches in both passes, clipping the second
    pass's gradient with Lightning's clip_gradients."""

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        micro = list(zip(batch[0].chunk(2), batch[1].chunk(2)))
        for x, y in micro:
            self.manual_backward(LOSS(self.net(x), y) / len(micro))
        opt.perturb_weights(zero_grad=True)
        for x, y in micro:
            self.manual_backward(LOSS(self.net(x), y) / len(micro), create_graph=opt.hessian_due)
        opt.unperturb()
        self.clip_gradients(opt, gradient_clip_val=CLIP, gradient_clip_algorithm="norm")
        opt.step()
        opt.zero_grad()


def fit(module, epochs, ckpt_path=None, batches=None, **trainer_kwargs):
    """Fits on ``batches`` (``data()``), in order; ``trainer_kwargs`` over one CPU process
    without logger, checkpoints or progress bar."""
    kwargs = dict(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                  enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, num_sanity_val_steps=0)
    kwargs.update(trainer_kwargs)
    trainer = pl.Trainer(**kwargs)
    batches = data() if batches is None else batches
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None),
                ckpt_path=ckpt_path)
    return trainer
