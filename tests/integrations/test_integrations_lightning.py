"""sassha_fast.integrations.lightning against the real pytorch_lightning, on CPU: automatic
optimization (finite_difference) equals a hand-written step(closure) loop and logs the clean
loss, manual optimization through self.optimizers() equals the raw optimizer's loop, what
cannot work is refused with the way out, and a checkpoint resumes bit for bit."""
import pytest
import torch

pl = pytest.importorskip("pytorch_lightning",
                         reason="the integrations extra (pip install -e .[integrations])")

from sassha_fast import MSASSHA, SASSHA  # noqa: E402
from tiny import assert_identical  # noqa: E402
from tiny_lightning import (BATCHES, CLIP, FD, LOSS, SETTINGS, Automatic, Manual,  # noqa: E402
                            ManualAccumulating, data, fit, make_net)


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


@pytest.mark.parametrize("optimization", ["automatic", "manual"])
def test_bf16_refusal_of_a_small_step_suggests_what_runs_there(optimization):
    """The default estimator is offered as a way out only as Lightning can run it: in
    manual optimization (automatic optimization refuses it)."""
    module = (Automatic(SASSHA, **FD) if optimization == "automatic"
              else Manual(hessian_estimator="finite_difference"))
    with pytest.raises(RuntimeError, match="under cpu autocast.*fd_eps=3e-2") as error:
        fit(module, epochs=1, precision="bf16-mixed")
    message = str(error.value)
    if optimization == "automatic":
        assert message.endswith("or use hessian_estimator='autograd' in Lightning's manual "
                                "optimization (automatic optimization runs backward() "
                                "without create_graph=True; docs/integrations.md)")
    else:
        assert message.endswith("or use hessian_estimator='autograd'")


@pytest.mark.parametrize("optimization", ["automatic", "manual"])
def test_a_grad_scaler_is_refused_with_bf16_as_the_way_out(optimization):
    """precision="16-mixed" (a GPU's default; on CPU Lightning turns it into bf16-mixed, so
    the plugin is given here): Lightning would step through scaler.step(), whose refusal
    ("call optimizer.step(closure, scaler=scaler)") cannot be followed under Lightning."""
    from pytorch_lightning.plugins.precision import MixedPrecision
    module = (Automatic(SASSHA, **FD) if optimization == "automatic"
              else Manual(hessian_estimator="autograd"))
    with pytest.raises(RuntimeError, match="16-mixed.*precision='bf16-mixed'") as error:
        fit(module, epochs=1, plugins=[MixedPrecision("16-mixed", "cpu")])
    assert "scaler=" not in str(error.value)


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


@pytest.mark.parametrize("make", [
    lambda: Automatic(SASSHA, **FD), lambda: Automatic(MSASSHA, **FD),
    lambda: Manual(hessian_estimator="autograd")], ids=["automatic-sassha-fd",
                                                        "automatic-msassha-fd",
                                                        "manual-sassha-autograd"])
def test_a_checkpoint_resumes_bit_for_bit(make, tmp_path):
    straight = make()
    fit(straight, epochs=4)
    first = make()
    trainer = fit(first, epochs=2)
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    resumed = make()
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
