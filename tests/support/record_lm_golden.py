"""Records tests/data/golden/lm_sassha_k3.pt from the authors' language-model SASSHA.

    python tests/support/record_lm_golden.py /path/to/their/Sassha/checkout [out.pt]

Their optimizer module (language_tasks/modeling/optimizers/sassha.py) is imported from the
checkout given; nothing of theirs is copied. The loop is tests/support/lm_golden.py
(their train_sassha.py reduced to the optimizer calls), the network
tests/support/golden.py's GoldenNet, on CPU in float32. The file holds tensors, numbers and
dicts only."""
import importlib.util
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from golden import GoldenNet  # noqa: E402
from lm_golden import SETTINGS, PowerSchedule, WarmupRho, powers, train  # noqa: E402

RESUME_AFTER = 5  # their state_dict after this iteration is stored, for the resume test


def authors_class(checkout: pathlib.Path):
    path = checkout / "language_tasks" / "modeling" / "optimizers" / "sassha.py"
    spec = importlib.util.spec_from_file_location("authors_lm_sassha", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SASSHA


def main(checkout: str, out: str) -> None:
    torch.manual_seed(0)
    model = GoldenNet()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(16, 1, 6, 6), torch.randint(0, 4, (16,))
    opt = authors_class(pathlib.Path(checkout))(model.parameters(), **SETTINGS["kwargs"])
    opt.hessian_power_scheduler = PowerSchedule(powers(SETTINGS["iters"]))
    opt.rho_scheduler = WarmupRho(SETTINGS["rho"], SETTINGS["rho_warmup_iters"] + 1)
    trajectory, saved = [], {}

    def record(iter_num, model, opt):
        params = list(model.parameters())
        trajectory.append({
            "params": [p.detach().clone() for p in params],
            "exp_avg": [opt.state[p]["exp_avg"].clone() for p in params],
            "exp_hessian_diag": [opt.state[p]["exp_hessian_diag"].clone() for p in params],
            "hessian_power": float(opt.hessian_power_t),
            "rho_t": float(getattr(opt, "rho_t", 0.0)),
        })
        if iter_num == RESUME_AFTER and "state_dict" not in saved:
            saved["state_dict"] = _plain(opt.state_dict())

    losses = train(model, opt, x, y, SETTINGS, after_iteration=record)
    full = trajectory[:]
    # Their optimizer resumed from that state_dict (its Rademacher generator restarts
    # from the seed: their checkpoint does not hold it).
    model = GoldenNet()
    with torch.no_grad():
        for p, q in zip(model.parameters(), full[RESUME_AFTER]["params"]):
            p.copy_(q)
    opt = authors_class(pathlib.Path(checkout))(model.parameters(), **SETTINGS["kwargs"])
    opt.load_state_dict(_plain(saved["state_dict"]))  # it steps the loaded tensors in place
    opt.hessian_power_scheduler = PowerSchedule(powers(SETTINGS["iters"]))
    opt.hessian_power_scheduler.calls = RESUME_AFTER + 1
    opt.rho_scheduler = WarmupRho(SETTINGS["rho"], SETTINGS["rho_warmup_iters"] + 1)
    opt.rho_scheduler.calls = RESUME_AFTER - SETTINGS["rho_warmup_iters"]
    trajectory.clear()
    train(model, opt, x, y, SETTINGS, start=RESUME_AFTER + 1, after_iteration=record)
    resumed, trajectory = trajectory[:], full
    torch.save({"optimizer": "LanguageModelSASSHA", "settings": SETTINGS, "x": x, "y": y,
                "init_state_dict": init, "losses": losses, "trajectory": trajectory,
                "resume_after": RESUME_AFTER, "authors_state_dict": saved["state_dict"],
                "resumed_trajectory": resumed}, out)
    print(f"wrote {out}: {len(trajectory)} iterations, final loss {losses[-1]:.6f}")


def _plain(value):
    """A deep copy made of dicts, lists, tensors and numbers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return value


if __name__ == "__main__":
    default = pathlib.Path(__file__).resolve().parents[1] / "data" / "golden" / "lm_sassha_k3.pt"
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else str(default))
