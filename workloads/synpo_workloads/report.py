"""`write_report(run_dir)`: a per-iteration metrics table (report.md) and a plot (report.png).

Reads only the stage manifests under <run_dir>/iter-<t>/<stage>/ (no torch). Iteration 0 is M0 (the baseline
evaluation); iterations 1..T are M_t with their pair counts. matplotlib runs on the Agg backend.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

from . import store

_ITER = re.compile(r"^iter-(\d+)$")
COLUMNS = ("iteration", "winRate", "lcWinRate", "score", "against", "pairsKept", "pairsAdded", "pairsTotal",
           "trainLoss", "seconds")


def _result(stage_dir: str) -> dict[str, Any] | None:
    """A stage's merged result, whether sharded or not; None when not done."""
    try:
        dirs = store.part_dirs(stage_dir)
    except FileNotFoundError:
        return None
    results = []
    for d in dirs:
        m = store.load_manifest(d)
        if m is None:
            return None
        results.append({**(m.get("result") or {}), "_seconds": (m.get("timings") or {}).get("seconds", 0.0)})
    return store.merge_results(results)


def collect(run_dir: str) -> list[dict[str, Any]]:
    """One row per iteration found under run_dir, from its stage manifests."""
    rows = []
    iterations = sorted(int(m.group(1)) for n in store._listdir(run_dir) if (m := _ITER.match(n)))
    for t in iterations:
        it_dir = store.join(run_dir, f"iter-{t}")
        row: dict[str, Any] = {"iteration": t}
        seconds = 0.0
        for stage in store._listdir(it_dir):
            res = _result(store.join(it_dir, stage))
            if res is None:
                continue
            seconds += float(res.get("_seconds") or 0.0)
            if stage == "evaluate":
                for key in ("winRate", "lcWinRate", "score", "against"):
                    if key in res:
                        row[key] = res[key]
            elif stage == "pairs":
                for key in ("pairsKept", "pairsAdded", "pairsTotal"):
                    if key in res:
                        row[key] = res[key]
            elif stage == "train":
                row["trainLoss"] = res.get("loss")
                row["model"] = res.get("model")
        row["seconds"] = round(seconds, 1)
        rows.append(row)
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown(rows: list[dict[str, Any]], title: str) -> str:
    lines = [f"# {title}", "", "Iteration 0 is the initial model M0; iteration t is M_t (trained on all pairs so "
             "far). Win rates are the first judge's, against the `against` column.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["iteration"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, keys, title in ((axes[0], ("winRate", "lcWinRate"), "win rate"), (axes[1], ("score",), "mean score"),
                            (axes[2], ("pairsKept", "pairsTotal"), "pairs")):
        for key in keys:
            ys = [r.get(key) for r in rows]
            ys = [float(y) if isinstance(y, int | float) else math.nan for y in ys]
            if not all(math.isnan(y) for y in ys):
                ax.plot(xs, ys, marker="o", label=key)
        ax.set_title(title)
        ax.set_xlabel("iteration (0 = M0)")
        ax.set_xticks(xs)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(run_dir: str) -> str:
    """Write report.md and report.png into run_dir (local or fsspec); returns the report.md path."""
    rows = collect(run_dir)
    title = f"SynPO run {os.path.basename(run_dir.rstrip('/'))}"
    md_path = store.join(run_dir, "report.md")
    png_path = store.join(run_dir, "report.png")
    if store.is_uri(run_dir):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, "report.png")
            plot(rows, local)
            with open(local, "rb") as f:
                store.write_bytes_atomic(png_path, f.read())
    else:
        plot(rows, png_path)
    body = markdown(rows, title) + "\n![metrics per iteration](report.png)\n"
    store.write_bytes_atomic(md_path, body.encode("utf-8"))
    return md_path
