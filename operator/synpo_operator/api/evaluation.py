"""The evaluate stage's result keys for win rates: one rule, used by the stage (writing), the operator's status
(`evaluation_fields`) and the report (reading). The unprefixed keys are part of `results.StageResult`.

The stage result is one flat JSON object (a container's termination message), so each opponent's figures are
prefixed: `vsReferencesWinRate`, `vsM0N`, …; the headline figure (the opponent named by `against`) also appears
unprefixed (`winRate`, `n`, `winRateLow`, …) for readers that want one number. The LLM judge's position figures
(positionConsistency, ties, firstPositionRate, positionBiased) travel the same way; they stay in the stage
results of the status (IterationSummary's figures are the win rates).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from .results import number

OPPONENTS = ("references", "M0")
FIGURE_KEYS = ("n", "winRate", "winRateLow", "winRateHigh", "lcWinRate", "lcWinRateLow", "lcWinRateHigh",
               "lcWinRateReason", "positionConsistency", "ties", "firstPositionRate", "positionBiased")


def _prefixed(opponent: str, key: str) -> str:
    return "vs" + opponent[0].upper() + opponent[1:] + key[0].upper() + key[1:]


def flatten(comparisons: Mapping[str, Mapping[str, Any]], headline: str | None) -> dict[str, Any]:
    """Result keys from {opponent: figure} (figure keys as FIGURE_KEYS; others are dropped)."""
    out: dict[str, Any] = {}
    if headline and headline in comparisons:
        out["against"] = headline
        out.update({k: v for k, v in comparisons[headline].items() if k in FIGURE_KEYS})
    for opponent, fig in comparisons.items():
        out.update({_prefixed(opponent, k): v for k, v in fig.items() if k in FIGURE_KEYS})
    return out


def unflatten(result: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{opponent: figure} from result keys; opponents without an `n` are absent."""
    out = {}
    for opponent in OPPONENTS:
        fig = {k: result[_prefixed(opponent, k)] for k in FIGURE_KEYS if result.get(_prefixed(opponent, k)) is not None}
        if "n" in fig:
            out[opponent] = fig
    return out


_ATTRS = {"n": "n", "winRate": "win_rate", "winRateLow": "win_rate_low", "winRateHigh": "win_rate_high",
          "lcWinRate": "lc_win_rate", "lcWinRateLow": "lc_win_rate_low", "lcWinRateHigh": "lc_win_rate_high",
          "lcWinRateReason": "lc_win_rate_reason"}


def _value(key: str, value: Any) -> Any:
    if key == "lcWinRateReason":
        return str(value)[:512] if value is not None else None
    return number(value, integer=key == "n")


def evaluation_fields(result: Mapping[str, Any] | None) -> dict[str, Any]:
    """IterationSummary keyword arguments beyond winRate/lcWinRate/score (which reconcile already reads)."""
    from .run import WinRateFigure  # the models import nothing from here; stages use flatten without pydantic

    if not result:
        return {}
    against = result.get("against")
    figures = [WinRateFigure(against=opponent, **{_ATTRS[k]: _value(k, v) for k, v in fig.items() if k in _ATTRS})
               for opponent, fig in unflatten(result).items() if number(fig["n"], integer=True) is not None]
    return {
        "against": against if against in OPPONENTS else None,
        "n": number(result.get("n"), integer=True),
        "win_rate_low": number(result.get("winRateLow")),
        "win_rate_high": number(result.get("winRateHigh")),
        "lc_win_rate_reason": _value("lcWinRateReason", result.get("lcWinRateReason")),
        "judge_errors": number(result.get("judgeErrors"), integer=True),
        "comparisons": figures,
    }


def report_uri(artifacts: str, results: Sequence[Mapping[str, Any] | None]) -> str | None:
    """status.report: the report named by the newest evaluate result that names one (`report`, relative to the
    run's artifact root, which is the same in every evaluation), as a URI under `artifacts`."""
    for result in reversed(results):
        name = (result or {}).get("report")
        if isinstance(name, str) and name:
            name = posixpath.normpath(name)
            if name.startswith(("/", "..")):
                return None  # not under the artifact root: never point users elsewhere
            return f"{artifacts.rstrip('/')}/{name}"[:2048]
    return None
