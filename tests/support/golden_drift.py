"""How far this machine's replays of the recorded files are from them: the measurements behind
the tolerances of tests/optim/test_golden.py and tests/optim/test_lm.py. Run it under each
forced instruction set (docs/development.md, "Testing"):

    ATEN_CPU_CAPABILITY=default SASSHA_FAST_CPU_ISA=generic python tests/support/golden_drift.py
"""
import pathlib
import sys

import torch

HERE = pathlib.Path(__file__).resolve().parent
# This folder (golden.py), tests/ (conftest.py) and tests/optim/ (test_golden.py, test_lm.py).
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent / "optim")]

from conftest import cpu_kernels, golden_dir  # noqa: E402
from golden import load, run_method_level, state_lists  # noqa: E402
from test_golden import GOLDEN_FILES, TOLERANCE  # noqa: E402
from test_lm import GOLDEN, relative, replay  # noqa: E402

BACKENDS = ["reference", "foreach", "cpu"]


def worst_of_bound(got: torch.Tensor, want: torch.Tensor) -> float:
    """|got - want| as a fraction of test_golden's bound (1: at the bound)."""
    bound = TOLERANCE["atol"] + TOLERANCE["rtol"] * want.abs()
    return ((got - want).abs() / bound).max().item()


def golden_rows():
    for file in GOLDEN_FILES:
        record = load(golden_dir() / file)
        for backend in BACKENDS:
            of_bound = relative_error = loss_error = 0.0
            for i, (loss, model, opt) in enumerate(run_method_level(record, backend)):
                want = record["trajectory"][i]
                pairs = list(zip([p.detach() for p in model.parameters()], want["params"]))
                for name, tensors in state_lists(record, opt).items():
                    pairs += list(zip(tensors, want[name]))
                of_bound = max([of_bound] + [worst_of_bound(a, b) for a, b in pairs])
                relative_error = max([relative_error] + [relative(a, b) for a, b in pairs])
                loss_error = max(loss_error, abs(loss / record["losses"][i] - 1))
            yield (f"{file} {backend}: {of_bound:.3f} of the bound, {relative_error:.1e} "
                   f"relative, loss {loss_error:.1e}")


def lm_rows():
    record = torch.load(GOLDEN, weights_only=False)
    trajectory = record["trajectory"]
    for backend in BACKENDS:
        for mode, restart_from in (("one iteration", trajectory), ("free-running", None)):
            losses, seen, _ = replay(record, backend, restart_from=restart_from)
            weights = max(relative(a, b) for i, params, *_ in seen
                          for a, b in zip(params, trajectory[i]["params"]))
            state = max(relative(a, b) for i, _, m, d, *_ in seen
                        for a, b in zip(m + d, trajectory[i]["exp_avg"]
                                        + trajectory[i]["exp_hessian_diag"]))
            loss = max(abs(a / b - 1) for a, b in zip(losses, record["losses"]))
            yield (f"lm_sassha_k3.pt {backend}, {mode}: weights {weights:.1e}, "
                   f"state {state:.1e}, loss {loss:.1e}")


def main() -> None:
    torch.manual_seed(0)
    print(cpu_kernels())
    for row in (*golden_rows(), *lm_rows()):
        print(row)


if __name__ == "__main__":
    main()
