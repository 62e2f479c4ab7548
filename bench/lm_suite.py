"""Learning rates of one's choice for the language-model suite's methods
(bench/suites/language_model.py), trained and scored as its grid's runs."""
import argparse
from typing import List, Optional

import torch

from .harness.config import lm_profile
from .harness.protocol import select
from .methods import LM_METHODS
from .suites.language_model import bits, prepare, train
from .workloads.corpus import load


def main(argv: Optional[List[str]] = None) -> None:
    """``python -m bench.lm_suite --profile full --methods adamw,sam-adamw --lrs 1e-4,3e-4``:
    seed-0 runs at learning rates of one's choice, trained and scored as the grid's runs
    (to see whether a learning rate chosen at the grid's edge hides a better one outside
    it); prints each run's validation and test bits per byte."""
    parser = argparse.ArgumentParser(description=main.__doc__.split(":")[0])
    parser.add_argument("--profile", default="quick", choices=("smoke", "quick", "full"))
    parser.add_argument("--methods", default=",".join(m.name for m in LM_METHODS))
    parser.add_argument("--lrs", required=True, help="comma-separated learning rates")
    args = parser.parse_args(argv)
    methods = select(LM_METHODS, args.methods)
    device = torch.device("cpu")
    profile = lm_profile(args.profile, device)
    torch.set_num_threads(profile.threads)
    data = prepare(load(train_bytes=profile.train_bytes), profile, device)
    print("| method | lr | validation bits per byte | test bits per byte | skipped steps |")
    print("| :--- | ---: | ---: | ---: | ---: |")
    for method in methods:
        for lr in (float(v) for v in args.lrs.split(",")):
            run = train(method, lr, data, profile, 0, device)
            scores = (f"{bits(run.val_loss):.3f} | {bits(run.test_loss):.3f}" if run.finite
                      else f"diverged ({run.stopped or 'non-finite weights'}) | -")
            print(f"| {method.name} | {lr:g} | {scores} | {run.skipped_steps} |", flush=True)


if __name__ == "__main__":
    main()
