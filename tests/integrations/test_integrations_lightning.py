"""sassha_fast.integrations.lightning against the real pytorch_lightning, on CPU: automatic
optimization (finite_difference) equals a hand-written step(closure) loop and logs the clean
loss, manual optimization through self.optimizers() equals the raw optimizer's loop, what
cannot work is refused with the way out, and a checkpoint resumes bit for bit."""
import pytest
import torch
from torch import nn

pl = pytest.importorskip("pytorch_lightning",
                         reason="the integrations extra (pip install -e .[integrations])")

from sassha_fast import MSASSHA, SASSHA  # noqa: E402
from sassha_fast.integrations.lightning import SasshaLightningMixin  # noqa: E402
from tiny import assert_identical  # noqa: E402

LOSS = nn.CrossEntropyLoss()
FD = dict(hessian_estimator="finite_difference")
SETTINGS = {SASSHA: dict(lr=0.15, rho=0.05, lazy_hessian=2),
            MSASSHA: dict(lr=0.15, rho=0.05, lazy_hessian=2, hessian_power=0.5)}
BATCHES = 4  # per epoch


def data():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(16 * BATCHES, 5, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, len(x), 16)]


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


CLIP = 0.05  # below the gradients' norms (about 0.3-1): every step is clipped


class ManualWithoutMixin(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = make_net()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        self.manual_backward(LOSS(self.net(batch[0]), batch[1]))
        opt.perturb_weights(zero_grad=True)
        self.manual_backward(LOSS(self.net(batch[0]), batch[1]), create_graph=opt.hessian_due)
        opt.unperturb()
        opt.step()

    def configure_optimizers(self):
        return SASSHA(self.parameters(), **SETTINGS[SASSHA])


def fit(module, epochs, ckpt_path=None, **trainer_kwargs):
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0,
                         **trainer_kwargs)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data(), batch_size=None),
                ckpt_path=ckpt_path)
    return trainer


def hand_loop(optimizer, epochs, backward_in_closure, **kwargs):
    """The plain-PyTorch loop: step(closure) per batch; the clean losses it returns."""
    net = make_net()
    opt = optimizer(net.parameters(), **{**SETTINGS[optimizer], **kwargs})
    losses = []
    for _ in range(epochs):
        for x, y in data():
            def closure():
                loss = LOSS(net(x), y)
                if backward_in_closure:
                    opt.zero_grad()
                    loss.backward()
                return loss
            losses.append(float(opt.step(closure)))
    return net, opt, losses


def assert_same_numbers(module, net, opt):
    for p, q in zip(module.net.parameters(), net.parameters()):
        assert torch.equal(p, q)
    lightning_opt = module.trainer.optimizers[0]
    for p, q in zip(module.net.parameters(), net.parameters()):
        for key in ("exp_avg", "exp_hessian_diag"):
            assert torch.equal(lightning_opt.state[p][key], opt.state[q][key])


@pytest.mark.parametrize("optimizer", [SASSHA, MSASSHA])
def test_automatic_optimization_equals_the_closure_loop_and_logs_the_clean_loss(optimizer):
    module = Automatic(optimizer, **FD)
    fit(module, epochs=2)
    net, opt, losses = hand_loop(optimizer, 2, backward_in_closure=True, **FD)
    assert_same_numbers(module, net, opt)
    logged, returned = zip(*module.logged)
    assert list(logged) == losses and list(returned) == losses  # the clean pass's, each step
    assert losses[-1] < 0.7 * losses[0]  # it trains
    # SASSHA runs training_step 2-3 times a step (probes on Hessian steps), M-SASSHA 1-2.
    assert module.training_steps > (2 if optimizer is SASSHA else 1) * 2 * BATCHES


def test_automatic_optimization_refuses_what_it_cannot_run():
    with pytest.raises(RuntimeError, match="hessian_estimator='finite_difference'.*manual_"):
        fit(Automatic(SASSHA), epochs=1)
    with pytest.raises(RuntimeError, match="accumulate_grad_batches > 1.*batch size"):
        fit(Automatic(SASSHA, **FD), epochs=1, accumulate_grad_batches=2)
    with pytest.raises(RuntimeError, match="gradient_clip_val.*manual optimization"):
        fit(Automatic(SASSHA, **FD), epochs=1, gradient_clip_val=1.0)


@pytest.mark.parametrize("estimator", ["autograd", "finite_difference"])
def test_manual_optimization_through_self_optimizers_equals_the_raw_loop(estimator):
    module = Manual(hessian_estimator=estimator)
    trainer = fit(module, epochs=2)
    assert trainer.global_step == 2 * BATCHES  # Lightning counted every step
    net = make_net()
    opt = SASSHA(net.parameters(), hessian_estimator=estimator, **SETTINGS[SASSHA])
    for _ in range(2):
        for x, y in data():
            LOSS(net(x), y).backward()
            opt.perturb_weights(zero_grad=True)
            if estimator == "autograd":
                LOSS(net(x), y).backward(create_graph=opt.hessian_due)
            else:
                LOSS(net(x), y).backward()
                for _ in opt.hessian_probes():
                    LOSS(net(x), y).backward()
            opt.unperturb()
            opt.step()
            opt.zero_grad()
    assert_same_numbers(module, net, opt)


def test_manual_optimization_without_the_mixin_is_refused_with_the_way_out():
    with pytest.raises(RuntimeError, match="accumulated since the last step.*"
                                           "SasshaLightningMixin"):
        fit(ManualWithoutMixin(), epochs=1)


@pytest.mark.parametrize("optimizer", [SASSHA, MSASSHA])
def test_a_checkpoint_resumes_bit_for_bit(optimizer, tmp_path):
    straight = Automatic(optimizer, **FD)
    fit(straight, epochs=4)
    first = Automatic(optimizer, **FD)
    trainer = fit(first, epochs=2)
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    resumed = Automatic(optimizer, **FD)
    fit(resumed, epochs=4, ckpt_path=tmp_path / "half.ckpt")
    for p, q in zip(resumed.net.parameters(), straight.net.parameters()):
        assert torch.equal(p, q)
    assert_identical(resumed.trainer.optimizers[0].state_dict(),
                     straight.trainer.optimizers[0].state_dict())
    # The second half differs from the first: the comparison is not of two untrained nets.
    assert not all(torch.equal(p, q) for p, q in zip(first.net.parameters(),
                                                     straight.net.parameters()))


def test_manual_accumulation_with_clipping_equals_the_raw_loop():
    module = ManualAccumulating()
    fit(module, epochs=2)
    net = make_net()
    opt = SASSHA(net.parameters(), **SETTINGS[SASSHA])
    norms = []
    for _ in range(2):
        for x, y in data():
            micro = list(zip(x.chunk(2), y.chunk(2)))
            for xm, ym in micro:
                (LOSS(net(xm), ym) / len(micro)).backward()
            opt.perturb_weights(zero_grad=True)
            for xm, ym in micro:
                (LOSS(net(xm), ym) / len(micro)).backward(create_graph=opt.hessian_due)
            opt.unperturb()
            norms.append(float(torch.nn.utils.clip_grad_norm_(net.parameters(), CLIP)))
            opt.step()
            opt.zero_grad()
    assert min(norms) > CLIP  # the clipping mattered
    assert_same_numbers(module, net, opt)


class AutomaticWithoutMixin(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = make_net()

    def training_step(self, batch, batch_idx):
        return LOSS(self.net(batch[0]), batch[1])

    def configure_optimizers(self):
        return SASSHA(self.parameters(), **SETTINGS[SASSHA])


def test_the_default_estimator_under_plain_lightning_names_the_way_out():
    """The user wrote no closure: the error names the estimator and the integration, not a
    closure to rewrite."""
    with pytest.raises(ValueError, match="hessian_estimator='finite_difference'.*"
                                         "SasshaLightningMixin"):
        fit(AutomaticWithoutMixin(), epochs=1)
