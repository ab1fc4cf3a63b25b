"""Progress lines for whoever runs the stage: `SYNPO_PROGRESS {"done": n, "total": m, "unit": "..."}` on stdout.

`synpo run` turns them into a bar per stage; in a pod they are plain log lines. No heavy imports here.
"""

from __future__ import annotations

import json
import time

PREFIX = "SYNPO_PROGRESS "
_last = 0.0


def report(done: int, total: int | None, unit: str, *, force: bool = False) -> None:
    """Print a progress line (at most twice a second unless forced or finished)."""
    global _last
    now = time.monotonic()
    if not force and done != total and now - _last < 0.5:
        return
    _last = now
    print(PREFIX + json.dumps({"done": done, "total": total, "unit": unit}), flush=True)


def trainer_callback():
    """A transformers TrainerCallback reporting optimizer steps."""
    from transformers import TrainerCallback

    class StepProgress(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            report(state.global_step, state.max_steps, "steps")

    return StepProgress()
