"""What every bench/*.py shares: JSON lines on the real stdout, everything else on stderr."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO


def json_stdout() -> TextIO:
    """The real stdout for the JSON lines; fd 1 then points at stderr, so Airflow's and the tools' chatter stays
    off it."""
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    return out


@contextmanager
def bench_postgres() -> Iterator[None]:
    """Airflow's environment (what is not set already) and the stack's PostgreSQL, stopped again afterwards if
    this started it."""
    from scripts.stack.airflow import airflow_env
    from scripts.stack.postgres import start_postgres, stop_postgres

    for key, value in airflow_env().items():
        os.environ.setdefault(key, value)
    started = start_postgres()
    try:
        yield
    finally:
        if started:
            stop_postgres()


def round_args(doc: str | None, rounds: int, size_mb: int = 50) -> argparse.Namespace:
    """The command line of a bench that repeats its measurements: ``--size-mb`` and ``--rounds``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=size_mb)
    parser.add_argument("--rounds", type=int, default=rounds)
    return parser.parse_args()


def medians(rounds: list[dict[str, float]], progress: Callable[[str], None]) -> dict[str, float]:
    """Each figure's median over the rounds, reported as one progress line."""
    med = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    progress("medians: " + ", ".join(f"{k}={v:.3f}" for k, v in med.items()))
    return med


def emit(out: TextIO, bench: str, size_mb: int, metric: str, value: float, unit: str,
         baseline: str | None = None, baseline_value: float | None = None, extra: dict | None = None) -> None:
    """One result line: ``{"bench", "metric", "value", "unit", "baseline", "baseline_value", "ratio", "size_mb"}``
    and the keys of ``extra`` (what else sets the figure apart, e.g. ``{"targets": 500}``)."""
    digits = 0 if unit == "bytes" else 3

    def rounded(number: float) -> float | int:
        return round(number, digits) if digits else int(number)

    print(json.dumps({"bench": bench, "metric": metric, "value": rounded(value), "unit": unit, "baseline": baseline,
                      "baseline_value": rounded(baseline_value) if baseline_value is not None else None,
                      "ratio": round(value / baseline_value, 3) if baseline_value else None, "size_mb": size_mb,
                      **(extra or {})}),
          file=out, flush=True)


def progress_printer(bench: str) -> Callable[[str], None]:
    """``progress(message)`` for one bench: ``[bench <name>] message`` on stderr."""
    def progress(message: str) -> None:
        print(f"[bench {bench}] {message}", file=sys.stderr, flush=True)

    return progress
