"""`python -m synpo_workloads <stage> --config stage.json [--shard N]`: run one SynPO stage.

The shard index comes from --shard, else env JOB_COMPLETION_INDEX (Kubernetes Indexed Jobs), else 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .runtime import STAGE_MODULES, main_entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m synpo_workloads", description=__doc__)
    parser.add_argument("stage", choices=sorted({*STAGE_MODULES, *(s.replace("-", "_") for s in STAGE_MODULES)}))
    parser.add_argument("--config", required=True, help="stage config JSON (plan/stage_config.py)")
    parser.add_argument("--shard", type=int, default=None, help="shard index (default: $JOB_COMPLETION_INDEX or 0)")
    args = parser.parse_args(argv)
    shard = args.shard if args.shard is not None else int(os.environ.get("JOB_COMPLETION_INDEX", "0") or 0)
    logging.basicConfig(level=os.environ.get("SYNPO_LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return main_entry(args.stage, args.config, shard)


if __name__ == "__main__":
    sys.exit(main())
