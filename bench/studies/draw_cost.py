"""What a Rademacher draw costs: the authors' recipe (the double backward's), the packed
draw (the finite difference's) and the alternatives weighed against it.

    python -m bench.studies.draw_cost [--sizes 1000000,30000000] [--threads N]
                                      [--device cpu] [--smoke]

One tensor of each size, fp32, every draw timed in turns (``bench.harness.timing``):

* ``authors``: ``hutchinson.authors_signs``, one generator call per sign (on a CPU a serial
  Mersenne Twister);
* ``packed``: ``hutchinson.PackedSigns``, what the finite difference draws: full-range
  64-bit words from the generator, each byte expanded by a lookup in a 256 x 8 table of +-1;
* ``packed-shifts``: the same words, the bits expanded by shifts and a cast instead;
* ``counter-word``: a counter-based hash (splitmix64's finaliser in int64 ops, the same on
  every device) per 64-bit word, expanded by the same table;
* ``counter-sign``: that hash per sign, its top bit the sign.

``packed`` was shipped: no counter-based draw was faster, and its state would have been a
counter of its own, not the generator states that checkpoints hold and CUDA graphs register
(docs/algorithm.md section 4). Timings: run it on a quiet machine (``uptime``)."""
import argparse
import os
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor

from sassha_fast.hessian.hutchinson import PackedSigns, authors_signs

from ..harness.meta import collect
from ..harness.timing import Budget, measure_all

# splitmix64's finaliser: (right shift, multiplier) rounds, then a last xor-shift. Its
# multipliers as int64 (torch's multiplication wraps); a right shift is made logical by
# masking the bits the sign extended.
MIX_ROUNDS = ((30, 0xBF58476D1CE4E5B9 - 2**64), (27, 0x94D049BB133111EB - 2**64))
MIX_LAST = 31


def _logical_shift(x: Tensor, shift: int) -> Tensor:
    return (x >> shift) & ((1 << (64 - shift)) - 1)


def mix(x: Tensor) -> Tensor:
    for shift, multiplier in MIX_ROUNDS:
        x = (x ^ _logical_shift(x, shift)) * multiplier
    return x ^ _logical_shift(x, MIX_LAST)


class Counter:
    """Counter-based draws: the hash of consecutive counter values, the counter advanced by
    as many as each draw used."""

    def __init__(self, device: torch.device):
        self.device = device
        self.next = 0
        self.table = PackedSigns()._table(device, torch.float32)

    def _hashes(self, count: int) -> Tensor:
        values = torch.arange(self.next, self.next + count, device=self.device)
        self.next += count
        return mix(values)

    def per_word(self, numel: int) -> Tensor:
        words = self._hashes(-(-numel // 64))
        return self.table.index_select(0, words.view(torch.uint8).int()).view(-1)[:numel]

    def per_sign(self, numel: int) -> Tensor:
        return torch.where(self._hashes(numel) < 0, 1.0, -1.0)


def draws(device: torch.device) -> Dict[str, Callable[[int], Tensor]]:
    generators = {name: torch.Generator(device).manual_seed(0)
                  for name in ("authors", "packed", "packed-shifts")}
    packed = PackedSigns()
    shifts = torch.arange(8, dtype=torch.uint8, device=device)
    counter = Counter(device)

    def packed_shifts(numel: int) -> Tensor:
        words = torch.empty(-(-numel // 64), dtype=torch.int64, device=device)
        words.random_(torch.iinfo(torch.int64).min, None, generator=generators["packed-shifts"])
        bits = (words.view(torch.uint8).unsqueeze(-1) >> shifts) & 1
        return bits.view(-1)[:numel].float().mul_(2).sub_(1)

    return {"authors": lambda n: authors_signs((n,), generators["authors"], device,
                                               torch.float32),
            "packed": lambda n: packed((n,), generators["packed"], device, torch.float32),
            "packed-shifts": packed_shifts,
            "counter-word": counter.per_word,
            "counter-sign": counter.per_sign}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,30000000", help="signs per draw")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--smoke", action="store_true", help="one small size, two repetitions")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sizes = [10_000] if args.smoke else [int(s) for s in args.sizes.split(",")]
    budget = (Budget(warmup=1, min_reps=2, max_reps=2, target_s=0.0, min_rep_s=0.0)
              if args.smoke else
              Budget(warmup=2, min_reps=10, max_reps=50, target_s=1.0, min_rep_s=0.005))
    meta = collect(device)
    print(f"# Rademacher draws, ms per fp32 draw ({meta['device_name']}, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, commit "
          f"{meta['commit'][:7]}, load average before {meta['load_average_before'][0]:.2f})\n")
    candidates = draws(device)
    print("| signs | " + " | ".join(candidates) + " | authors / packed |")
    print("| ---: |" + " ---: |" * (len(candidates) + 1))
    for size in sizes:
        timings = measure_all([lambda f=f: f(size) for f in candidates.values()], device,
                              budget)
        ms = {name: 1e3 * t.median_s for name, t in zip(candidates, timings)}
        print(f"| {size:,} | " + " | ".join(f"{v:.2f}" for v in ms.values())
              + f" | {ms['authors'] / ms['packed']:.1f}x |", flush=True)
    print(f"\nload average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
