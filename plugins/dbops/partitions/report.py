"""Figures for people: per table what was created, moved out of DEFAULT, retired and freed, in how long."""

from __future__ import annotations

from typing import Any

from dbops.core.units import human_bytes

RETIRING = ("drop", "archive", "keep")


def empty_figures() -> dict[str, Any]:
    return {"created": 0, "moved_rows": 0, "retired": 0, "bytes_freed": 0, "seconds": 0.0, "skipped": [],
            "failed": []}


def summarize(steps: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per table: created, rows moved from DEFAULT, retired, bytes freed, seconds, skipped and failed steps."""
    tables: dict[str, dict[str, Any]] = {}
    for step in steps:
        t = tables.setdefault(step["table_name"], empty_figures())
        if step["status"] == "done":
            t["created"] += step["step"] == "create"
            t["moved_rows"] += (step["rows"] or 0) if step["step"] == "create" else 0
            t["retired"] += step["step"] in RETIRING
            t["bytes_freed"] += (step["bytes"] or 0) if step["step"] == "drop" else 0
        else:
            t[step["status"]].append(f"{step['step']} {step['partition_name']}: {step['detail']}")
        t["seconds"] = round(t["seconds"] + (step["seconds"] or 0.0), 3)
    return tables


def summary_line(target: str, table: str, figures: dict[str, Any], default_rows: int, ahead: str,
                 not_attached: int = 0, half_done: int = 0) -> str:
    verdict = "FAILED" if figures["failed"] else "SKIPPED STEPS" if figures["skipped"] else "OK"
    strays = (f"; {not_attached} tables named like its partitions not attached (see the findings)"
              if not_attached else "")
    halves = f"; {half_done} moves out of DEFAULT left half done (rows not visible)" if half_done else ""
    return (f"{verdict}: partitions {target} {table}: created {figures['created']}, moved {figures['moved_rows']} "
            f"rows from DEFAULT, retired {figures['retired']}, freed {human_bytes(figures['bytes_freed'])}, "
            f"{figures['seconds']:.2f} s; {default_rows} rows left in DEFAULT; covered until {ahead}; "
            f"{len(figures['skipped'])} skipped, {len(figures['failed'])} failed{strays}{halves}")
