"""Some of the quality suite's methods (bench/suites/quality.py), run and written as
``python -m bench --suite quality`` runs and writes all of them."""
import argparse
import os
import pathlib
import sys

import torch

from .harness import meta
from .harness.config import quality_profile
from .harness.protocol import select
from .methods import QUALITY_METHODS
from .output import quality_report
from .suites import quality


def main(argv=None) -> None:
    """``python -m bench.quality_suite --methods sassha,sassha-fd --profile quick --seeds 3
    --out DIR``: some of the methods only (``python -m bench --suite quality`` runs all),
    written as that command writes them."""
    parser = argparse.ArgumentParser(description=main.__doc__.split(":")[0])
    parser.add_argument("--methods", default=",".join(m.name for m in QUALITY_METHODS))
    parser.add_argument("--profile", default="quick", choices=("smoke", "quick", "full"))
    parser.add_argument("--seeds", type=int, help="override the profile's seed count")
    parser.add_argument("--out", type=pathlib.Path, required=True)
    args = parser.parse_args(argv)
    methods = select(QUALITY_METHODS, args.methods)
    profile = quality_profile(args.profile)
    if args.seeds:
        profile = profile._replace(seeds=args.seeds)
    info = meta.collect(torch.device("cpu"))
    rows, curves = quality.run(profile, methods,
                               progress=lambda label: print(label, flush=True))
    info.update(profile=profile.name, seeds=profile.seeds, methods=args.methods,
                load_average_after=os.getloadavg(),
                command=" ".join(["python -m bench.quality_suite"]
                                 + (sys.argv[1:] if argv is None else list(argv))))
    written = quality_report.write_all(rows, curves, args.out, info, profile)
    print(quality_report.table_markdown(rows))
    print("wrote " + ", ".join(written))


if __name__ == "__main__":
    main()
