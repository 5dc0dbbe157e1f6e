"""Figures for people: sizes in binary units."""

from __future__ import annotations


def human_bytes(n: int | float | None) -> str:
    """``512 B``, ``4.0 KiB``, ``12.3 MiB``, ``2.0 GiB`` (or ``-``)."""
    if n is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"
