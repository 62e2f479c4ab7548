"""Which sassha_fast backends the suites run: every one usable on the device, found at run
time (a backend merged later is picked up without touching the benchmarks)."""
from typing import Dict, List, Optional, Sequence

import torch

import sassha_fast
from sassha_fast import functional


def usable(device: torch.device, wanted: Optional[Sequence[str]] = None) -> List[str]:
    """Backends that run on ``device`` here (restricted to ``wanted`` when given, in that
    order); raises ValueError for a wanted one that cannot run, saying why."""
    names = list(wanted) if wanted else list(sassha_fast.available_backends())
    out = []
    for name in names:
        try:
            functional.resolve(name, device)
        except (RuntimeError, ValueError) as exc:
            if wanted:
                raise ValueError(f"backend {name!r} cannot run on {device}: {exc}") from exc
            continue
        out.append(name)
    return out


def report(device: torch.device) -> Dict[str, str]:
    """Every backend with "runs on <device>" or the reason it does not (for the metadata)."""
    runs = set(usable(device))
    return {name: f"runs on {device.type}" if name in runs else
            (str(why) if not why.available else f"does not run on {device.type}")
            for name, why in sassha_fast.available_backends().items()}
