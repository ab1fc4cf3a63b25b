"""The evaluation part of an IterationSummary, from the evaluate stage's result (pure; keys: api/evaluation.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .api.evaluation import OPPONENTS, unflatten
from .api.run import WinRateFigure

_ATTRS = {"n": "n", "winRate": "win_rate", "winRateLow": "win_rate_low", "winRateHigh": "win_rate_high",
          "lcWinRate": "lc_win_rate", "lcWinRateLow": "lc_win_rate_low", "lcWinRateHigh": "lc_win_rate_high",
          "lcWinRateReason": "lc_win_rate_reason"}


def _num(value: Any, integer: bool = False) -> Any:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value) if integer else float(value)
    except (TypeError, ValueError):
        return None


def _value(key: str, value: Any) -> Any:
    if key == "lcWinRateReason":
        return str(value)[:512] if value is not None else None
    return _num(value, integer=key == "n")


def evaluation_fields(result: Mapping[str, Any] | None) -> dict[str, Any]:
    """IterationSummary keyword arguments beyond winRate/lcWinRate/score (which reconcile already reads)."""
    if not result:
        return {}
    against = result.get("against")
    figures = [WinRateFigure(against=opponent, **{_ATTRS[k]: _value(k, v) for k, v in fig.items()})
               for opponent, fig in unflatten(result).items() if _num(fig["n"], integer=True) is not None]
    return {
        "against": against if against in OPPONENTS else None,
        "n": _num(result.get("n"), integer=True),
        "win_rate_low": _num(result.get("winRateLow")),
        "win_rate_high": _num(result.get("winRateHigh")),
        "lc_win_rate_reason": _value("lcWinRateReason", result.get("lcWinRateReason")),
        "judge_errors": _num(result.get("judgeErrors"), integer=True),
        "comparisons": figures,
    }
