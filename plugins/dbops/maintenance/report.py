"""The maintenance run's report: per planned object its final status and figures, and the report's text.

Built from the plan (the plan task's result) and every attempt in the maintenance log for the run's
logical date; pure functions, no database.
"""

from __future__ import annotations

from typing import Any

from dbops.maintenance.plan import Action
from dbops.core.units import human_bytes

REPORT_LINES = 10  # unused indexes logged one per line; the rest are in the result
FINAL = ("done", "skipped", "planned")  # every other status is a failure (failed, retry, not run)


def build_report(result: dict[str, Any], attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """Per planned (or earlier finished) object: its final status and figures from the attempts."""
    last: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in attempts:
        key = (row["schema_name"], row["object_name"], row["action"])
        if last.get(key, {}).get("status") != "done":  # a finished action stays finished
            last[key] = row
    planned = [Action.from_dict(a) for a in result["plan"]["actions"]]
    earlier = [Action.from_dict(a) for a in result["plan"]["done"]]
    objects = []
    for action in planned + earlier:
        row = last.get((action.schema_name, action.name, action.action))
        if row is None:
            status, why = ("planned", "dry run") if result["dry_run"] else ("not run", "its task never ran")
        else:
            status = row["status"]
            why = row["error"] or ("done by an earlier run for this logical date" if action in earlier else "")
        done = row is not None and status == "done"
        objects.append({"object": f"{action.schema_name}.{action.name}", "action": action.action, "status": status,
                        "bytes_before": row["bytes_before"] if done else None,
                        "bytes_after": row["bytes_after"] if done else None,
                        "reclaimed_bytes": (row["bytes_before"] or 0) - (row["bytes_after"] or 0) if done else 0,
                        "seconds": (row["seconds"] or 0.0) if row else 0.0, "why": why})
    skipped = [row for row in objects if row["status"] == "skipped"]
    totals = {"done": sum(r["status"] == "done" for r in objects), "skipped": len(skipped),
              "failed": sum(r["status"] not in FINAL for r in objects),
              "reclaimed_bytes": sum(r["reclaimed_bytes"] for r in objects),
              "seconds": round(sum(r["seconds"] for r in objects), 3)}
    return {"target": result["target"], "kind": result["kind"], "logical_date": result["logical_date"],
            "dry_run": result["dry_run"], "objects": objects, "totals": totals,
            "skipped_reasons": [f"{r['object']}: {r['why']}" for r in skipped],
            "unused_indexes": result["unused_indexes"], "duplicate_indexes": result["duplicate_indexes"]}


def failures(report: dict[str, Any]) -> list[str]:
    """``<action> <object> <status>: <why>`` of every object that did not finish."""
    return [f"{row['action']} {row['object']} {row['status']}: {row['why']}" for row in report["objects"]
            if row["status"] not in FINAL]


def detail_lines(result: dict[str, Any], report: dict[str, Any]) -> list[str]:
    """One line per object, per plan note, per unused index (the largest ones) and per duplicate set."""
    lines = [f"{row['action']:<22} {row['status']:<10} {row['object']}: {human_bytes(row['bytes_before'])} -> "
             f"{human_bytes(row['bytes_after'])}, reclaimed {human_bytes(row['reclaimed_bytes'])}, "
             f"{row['seconds'] or 0.0:.2f} s" + (f" ({row['why']})" if row["why"] else "") for row in report["objects"]]
    lines += [f"not executed: {note['action']} {note['schema_name']}.{note['name']}: {note['reason']}"
              for note in result["plan"]["notes"]]
    unused = report["unused_indexes"]
    since = result["scan"]["stats_reset"] or "the statistics were created"
    lines += [f"unused index (report only): {row['schema']}.{row['index']} on {row['table']}, "
              f"{human_bytes(row['bytes'])}, {row['scans']} scans since {since}" for row in unused[:REPORT_LINES]]
    if len(unused) > REPORT_LINES:
        lines.append(f"... and {len(unused) - REPORT_LINES} smaller unused indexes "
                     f"({human_bytes(sum(r['bytes'] for r in unused[REPORT_LINES:]))}): all in this task's result "
                     "and in dbops.maintenance_runs.report")
    lines += [f"duplicate indexes (report only) on {row['schema_name']}.{row['table_name']}: "
              f"{', '.join(row['indexes'])} ({'/'.join(human_bytes(b) for b in row['bytes'])} each)"
              for row in report["duplicate_indexes"]]
    return lines


def summary_line(result: dict[str, Any], report: dict[str, Any]) -> str:
    """The run's last line, verdict first: ``OK: weekly maintenance appdb 2026-11-22: 2 done, ...``."""
    totals = report["totals"]
    failed = failures(report)
    verdict = f"FAILED: {totals['failed']} of {len(report['objects'])} actions did not finish" if failed else "OK"
    return (f"{verdict}: {report['kind']} maintenance {report['target']} {report['logical_date'][:10]}"
            f"{' (dry run)' if report['dry_run'] else ''}: {totals['done']} done, reclaimed "
            f"{human_bytes(totals['reclaimed_bytes'])}, {totals['seconds']:.1f} s; {totals['skipped']} skipped "
            f"({'; '.join(report['skipped_reasons']) or 'none'}); {totals['failed']} failed; "
            f"{len(result['plan']['notes'])} reported only; {len(report['unused_indexes'])} unused and "
            f"{len(report['duplicate_indexes'])} duplicate index sets reported")
