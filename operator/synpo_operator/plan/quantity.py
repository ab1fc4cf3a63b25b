"""Kubernetes resource quantities as exact numbers, and a share of one (pure): how a GPU pod's CPU and memory
follow its share of a node's GPUs (plan/resources.py)."""

from __future__ import annotations

import re
from fractions import Fraction

_SUFFIX = {"": 1, "m": Fraction(1, 1000), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
           "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$")
MI = 2**20


def parse_quantity(text: str) -> Fraction:
    """'500m' → 1/2, '8Gi' → 8·2^30 (the syntax of api.common.Quantity)."""
    match = _QUANTITY.match(text)
    if not match:
        raise ValueError(f"not a quantity: {text!r}")
    return Fraction(match.group(1)) * _SUFFIX[match.group(2) or ""]


def cpu_quantity(cores: Fraction) -> str:
    """Whole cores as an integer, else millicores rounded up ('4', '1500m')."""
    milli = -(-cores * 1000 // 1)
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def memory_quantity(nbytes: Fraction) -> str:
    """Bytes as whole Gi when exact, else Mi rounded up ('64Gi', '1536Mi')."""
    mib = -(-nbytes // MI)
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"


def share(text: str | None, part: int, whole: int, *, memory: bool) -> str | None:
    """`part`/`whole` of the quantity `text` (None stays None; a whole share returns `text` as written)."""
    if text is None or part >= whole:
        return text
    value = parse_quantity(text) * Fraction(part, whole)
    return memory_quantity(value) if memory else cpu_quantity(value)
