"""A tiny GPT-2 built from its config (nothing downloaded), a learnable dataset and
``SasshaTrainer`` arguments, shared by the Trainer tests in one process and the workers that
run it on several (trainer_worker.py)."""
import torch
import transformers

from sassha_fast import MSASSHA, SASSHA
from sassha_fast.integrations.transformers import SasshaTrainer

FD = "finite_difference"
SETTINGS = {SASSHA: dict(lr=0.3, rho=0.05, lazy_hessian=2),
            MSASSHA: dict(lr=0.3, rho=0.05, lazy_hessian=2, hessian_power=0.5)}
MICRO, ACCUMULATE, EXAMPLES = 4, 2, 32  # 4 optimizer steps per epoch in one process
MAX_GRAD_NORM = 0.5


def make_model(use_cache=False):
    """use_cache=False as the Trainer runs it (it sets model.config.use_cache to
    TrainingArguments.use_cache, False by default). With the cache, GPT-2's eager attention
    multiplies the query by a contiguous copy of the keys (DynamicCache concatenates them)
    instead of a strided view, and the logits round differently (3.7e-9 here)."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=16, n_positions=8, n_embd=16, n_layer=1,
                                     n_head=2, resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0, use_cache=use_cache)
    # Eager attention: the default estimator's double backward (SDPA's CPU kernel has none).
    config._attn_implementation = "eager"
    return transformers.GPT2LMHeadModel(config)


def dataset():
    """Sequences that continue an arithmetic progression mod 16: learnable."""
    generator = torch.Generator().manual_seed(2)
    starts = torch.randint(0, 16, (EXAMPLES, 1), generator=generator)
    steps = torch.randint(1, 3, (EXAMPLES, 1), generator=generator)
    ids = (starts + steps * torch.arange(8)) % 16
    return [{"input_ids": row, "labels": row} for row in ids]


class InOrder(SasshaTrainer):
    """Micro-batches in dataset order, so that a hand-written loop (or one process fed what
    several ranks are fed) sees the same ones."""

    def _get_train_sampler(self, *args, **kwargs):
        return torch.utils.data.SequentialSampler(self.train_dataset)


def trainer_for(model, opt, output_dir, trainer_class=InOrder, examples=None, **kwargs):
    """``kwargs`` over the TrainingArguments of these tests; trains on ``examples``
    (``dataset()``)."""
    args = dict(output_dir=str(output_dir), per_device_train_batch_size=MICRO,
                gradient_accumulation_steps=ACCUMULATE, max_grad_norm=MAX_GRAD_NORM,
                num_train_epochs=2, lr_scheduler_type="constant", logging_steps=1,
                save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
                seed=0, dataloader_num_workers=0)
    args.update(kwargs)
    return trainer_class(model=model, args=transformers.TrainingArguments(**args),
                         train_dataset=dataset() if examples is None else examples,
                         optimizers=(opt, None))


def logged(trainer, key="loss"):
    return [entry[key] for entry in trainer.state.log_history if key in entry]
