"""How far each backend usable here is from the authors' recorded trajectories.

    python scripts/golden_agreement.py

Replays the golden files (tests/data/golden) with both loops, as tests/optim/test_golden.py
does, and prints per file, loop and backend the worst relative difference over every
iteration and every parameter and state tensor: max |got - recorded| / max |recorded| per
tensor, and the share of iterations whose parameters equal the record bit for bit.
"""
import pathlib
import sys

import torch

TESTS = pathlib.Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS / "support"))

from golden import load, run_method_level, run_one_call, state_lists  # noqa: E402
from sassha_fast import available_backends  # noqa: E402

FILES = ["sassha_k3.pt", "sassha_k1_linear_power.pt", "msassha_k2.pt"]
LOOPS = {"method-level": run_method_level, "one-call": run_one_call}


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.detach() - want).abs().max()) / max(float(want.abs().max()), 1e-30)


def compare(record, runner, backend):
    worst, identical, iterations = 0.0, 0, 0
    for i, (_, model, opt) in enumerate(runner(record, backend)):
        expected = record["trajectory"][i]
        params = list(model.parameters())
        worst = max([worst] + [relative(p, q) for p, q in zip(params, expected["params"])])
        for name, tensors in state_lists(record, opt).items():
            worst = max([worst] + [relative(t, q) for t, q in zip(tensors, expected[name])])
        identical += all(torch.equal(p.detach(), q) for p, q in zip(params, expected["params"]))
        iterations += 1
    return worst, identical / iterations


def main() -> int:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    backends = [name for name, a in available_backends().items()
                if a.available and name != "cuda"]
    print(f"torch {torch.__version__}, CPU; worst of max|got - recorded| / max|recorded| "
          "over iterations and tensors; share of iterations with bit-identical parameters")
    print("| file | loop | backend | worst relative difference | bit-identical iterations |")
    print("| :--- | :--- | :--- | ---: | ---: |")
    for file in FILES:
        record = load(TESTS / "data" / "golden" / file)
        for loop, runner in LOOPS.items():
            for backend in backends:
                worst, share = compare(record, runner, backend)
                print(f"| {file} | {loop} | {backend} | {worst:.1e} | {share:.0%} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
