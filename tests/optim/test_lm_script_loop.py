"""The authors' GPT-2 training loop (language_tasks/modeling/train_sassha.py), written in
its style on a tiny GPT, with sassha_fast.lm.SASSHA: micro-batches, rho warm-up and
schedule, Hessian iterations chosen by iter_num, step(iter_num), _sync_gradient(), and a
checkpoint saved mid-run and resumed as their script resumes (init_from='resume')."""
import io
import math

import torch
from torch import nn
from torch.nn import functional as F

from sassha_fast.lm import SASSHA

VOCAB, BLOCK, EMBD = 32, 8, 16


class TinyGPT(nn.Module):
    """One pre-norm transformer block with a causal self-attention, tied embeddings."""

    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, EMBD)
        self.wpe = nn.Embedding(BLOCK, EMBD)
        self.ln1, self.ln2, self.ln_f = nn.LayerNorm(EMBD), nn.LayerNorm(EMBD), nn.LayerNorm(EMBD)
        self.attn = nn.Linear(EMBD, 3 * EMBD, bias=False)
        self.proj = nn.Linear(EMBD, EMBD, bias=False)
        self.mlp = nn.Sequential(nn.Linear(EMBD, 4 * EMBD, bias=False), nn.GELU(),
                                 nn.Linear(4 * EMBD, EMBD, bias=False))
        self.lm_head = nn.Linear(EMBD, VOCAB, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx, targets):
        b, t = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(t))
        q, k, v = self.attn(self.ln1(x)).split(EMBD, dim=2)
        heads = lambda z: z.reshape(b, t, 2, EMBD // 2).transpose(1, 2)  # noqa: E731
        # explicit attention: scaled_dot_product_attention has no double backward on CPU
        att = heads(q) @ heads(k).transpose(-2, -1) / math.sqrt(EMBD // 2)
        att = att.masked_fill(torch.ones(t, t).tril() == 0, float("-inf")).softmax(-1)
        y = (att @ heads(v)).transpose(1, 2).reshape(b, t, EMBD)
        x = x + self.proj(y)
        x = x + self.mlp(self.ln2(x))
        logits = self.lm_head(self.ln_f(x))
        return logits, F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))


class PowerScheduler:  # the shape of their CustomConstant: max until warm-up, then min
    def __init__(self, t, warmup_steps, max_value=1.0, min_value=0.8):
        self.t, self.warmup, self.max, self.min = t, warmup_steps, max_value, min_value

    def step(self):
        value = self.max if self.t <= self.warmup else self.min
        self.t += 1
        return value


class RhoScheduler:  # their Rho_ConstantScheduler started past its warm-up
    def __init__(self, rho):
        self.rho = rho

    def step(self):
        return self.rho


def run(max_iters, init_from="scratch", checkpoint=None, save_at=None):
    gradient_accumulation_steps, batch_size = 2, 4
    learning_rate, min_lr, warmup_iters = 0.05, 0.005, 2
    lazy_hessian, rho_warmup_iters, eval_interval = 2, 2, 5
    data = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (4 * batch_size, BLOCK + 1), generator=data)

    def get_batch(n):  # a fixed cycle of batches, indexed so that a resume sees the same
        rows = tokens[(n % 4) * batch_size:(n % 4 + 1) * batch_size]
        return rows[:, :-1], rows[:, 1:]

    def get_lr(it):
        if it < warmup_iters:
            return learning_rate * (it + 1) / warmup_iters
        ratio = (it - warmup_iters) / (max_iters - warmup_iters)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)

    torch.manual_seed(2099)
    model = TinyGPT()
    iter_num = 0
    if init_from == "resume":
        model.load_state_dict(checkpoint["model"])
        iter_num = checkpoint["iter_num"]
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() == 2
             and not n.startswith("wte") and not n.startswith("wpe")]
    no_decay = [p for p in model.parameters() if all(p is not q for q in decay)]
    optimizer = SASSHA([{"params": decay, "weight_decay": 1e-2},
                        {"params": no_decay, "weight_decay": 0.0}],
                       lr=learning_rate, betas=(0.965, 0.99), weight_decay=1e-2,
                       lazy_hessian=lazy_hessian, eps=1e-4, seed=2099)
    optimizer.hessian_power_scheduler = PowerScheduler(iter_num, warmup_steps=3)
    optimizer.rho_scheduler = RhoScheduler(0.02)
    resume_step = False
    if init_from == "resume":
        optimizer.load_state_dict(checkpoint["optimizer"])
        resume_step = True

    batch_counter = gradient_accumulation_steps * iter_num
    X, Y = get_batch(batch_counter)
    stored_batches, losses, saved, logged = [], [], None, []
    while True:
        lr = get_lr(iter_num)
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr
        if save_at is not None and iter_num == save_at:
            buffer = io.BytesIO()
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "iter_num": iter_num}, buffer)
            buffer.seek(0)
            saved = torch.load(buffer, map_location="cpu")
        hessian_iteration = iter_num % lazy_hessian == 0 or resume_step
        resume_step = False
        if hessian_iteration:
            optimizer.zero_hessian()
        for micro_step in range(gradient_accumulation_steps):
            logits, loss = model(X, Y)
            stored_batches.append((X, Y))
            batch_counter += 1
            X, Y = get_batch(batch_counter)
            if hessian_iteration and iter_num <= rho_warmup_iters:
                (loss / gradient_accumulation_steps).backward(create_graph=True)
                optimizer.set_hessian()
            else:
                (loss / gradient_accumulation_steps).backward()
        optimizer._sync_gradient()
        if iter_num > rho_warmup_iters:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.perturb_weights()
            optimizer.zero_grad(set_to_none=True)
            while stored_batches:
                pX, pY = stored_batches.pop()
                _, sam_loss = model(pX, pY)
                (sam_loss / gradient_accumulation_steps).backward(create_graph=hessian_iteration)
                if hessian_iteration:
                    optimizer.set_hessian()
            optimizer.unperturb()
            optimizer._sync_gradient()
        else:
            stored_batches.clear()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step(iter_num)
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        state = optimizer.state_dict()["state"]
        logged.append((optimizer.rho_t if iter_num > rho_warmup_iters else 0,
                       optimizer.hessian_power_t,
                       sum(s["exp_hessian_diag"].norm().item() ** 2 for s in state.values())))
        iter_num += 1
        if iter_num > max_iters:
            break
    return model, losses, saved, logged


def test_their_script_trains_a_tiny_gpt_and_resumes_from_a_checkpoint_mid_run():
    # saved at a Hessian iteration: their resume forces one (resume_step), and a forced one
    # elsewhere would draw Rademacher vectors the uninterrupted run does not draw
    model, losses, saved, logged = run(max_iters=9, save_at=6)
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) < sum(losses[:3])
    assert [rho for rho, *_ in logged[:3]] == [0, 0, 0] and logged[3][0] == 0.02
    assert [power for _, power, _ in logged[3:6]] == [1.0, 0.8, 0.8]
    assert logged[0][2] > 0  # the Hessian of iteration 0 reached D
    resumed, resumed_losses, _, _ = run(max_iters=9, init_from="resume", checkpoint=saved)
    assert resumed_losses == losses[6:]
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
