#!/usr/bin/env python3
"""Build the deterministic MongoDB demo database (the ``chatdb`` target) of seed 004's platform.

    python scripts/mongo_demo_data.py --size-mb 20 [--seed 42] [--now 2026-12-01]

Connection: the local stack's server (scripts/stack/mongo.py; the password comes from var/secrets,
never from arguments). Collections ``chat_conversations`` (180-day retention on ``last_message_at``),
``analytics_events`` (30-day retention on ``timestamp``), ``parsed_resumes`` and ``ai_content``, each
dropped and rebuilt with its indexes from a seeded random.Random; documents lie on both sides of
each retention cutoff counted back from ``--now`` (default: today, 00:00 UTC). The same --seed,
--now and --size-mb give the same documents. Prints one summary line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

DAY = dt.timedelta(days=1)
BATCH = 1000
# Approximate BSON bytes per document, to turn --size-mb into document counts.
SHARES = {"chat_conversations": (0.40, 1650), "analytics_events": (0.30, 135), "parsed_resumes": (0.15, 880),
          "ai_content": (0.15, 960)}
INDEXES = {
    "chat_conversations": [([("last_message_at", 1)], {}), ([("participants", 1)], {})],
    "analytics_events": [([("timestamp", 1)], {}), ([("user_id", 1), ("timestamp", -1)], {})],
    "parsed_resumes": [([("candidate_id", 1)], {"unique": True})],
    "ai_content": [([("kind", 1), ("created_at", -1)], {})],
}
EVENTS = ("page_view", "job_view", "search", "apply_click", "login", "profile_update")
SKILLS = ("ICU", "ER", "pediatrics", "oncology", "telemetry", "OR", "NICU", "med-surg", "L&D", "dialysis")
WORDS = ("shift", "contract", "facility", "license", "travel", "housing", "rate", "schedule", "credential",
         "interview", "offer", "night", "weekend", "orientation", "float", "unit", "charge", "compliance")


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def _conversation(rng: random.Random, i: int, now: dt.datetime) -> dict:
    last = now - dt.timedelta(days=rng.uniform(0, 400))  # 180-day cutoff: about 55 % older
    messages = [{"from": rng.choice(("candidate", "recruiter", "bot")), "text": _text(rng, rng.randint(5, 25)),
                 "at": last - dt.timedelta(minutes=10 * k)} for k in range(rng.randint(4, 14))]
    return {"_id": i, "participants": [f"candidate:{rng.randint(1, 5000)}", f"recruiter:{rng.randint(1, 80)}"],
            "created_at": messages[-1]["at"], "last_message_at": last, "messages": messages,
            "channel": rng.choice(("web", "sms", "app"))}


def _event(rng: random.Random, i: int, now: dt.datetime) -> dict:
    return {"_id": i, "timestamp": now - dt.timedelta(seconds=rng.uniform(0, 60 * 86400)),  # 30-day cutoff: half
            "user_id": rng.randint(1, 5000), "event": rng.choice(EVENTS),
            "properties": {"path": f"/jobs/{rng.randint(1, 9000)}", "ms": rng.randint(20, 3000),
                           "referrer": rng.choice(("google", "email", "direct", "indeed"))}}


def _resume(rng: random.Random, i: int, now: dt.datetime) -> dict:
    return {"_id": i, "candidate_id": i, "parsed_at": now - dt.timedelta(days=rng.uniform(0, 700)),
            "skills": rng.sample(SKILLS, rng.randint(1, 5)), "years": rng.randint(0, 30),
            "experience": [{"facility": f"Facility {rng.randint(1, 400)}", "role": rng.choice(SKILLS),
                            "summary": _text(rng, 30)} for _ in range(rng.randint(1, 4))]}


def _ai_content(rng: random.Random, i: int, now: dt.datetime) -> dict:
    return {"_id": i, "kind": rng.choice(("job_description", "outreach_email", "summary")),
            "created_at": now - dt.timedelta(days=rng.uniform(0, 365)), "model": "demo-model-1",
            "body": _text(rng, rng.randint(60, 160))}


BUILDERS: dict[str, Callable[[random.Random, int, dt.datetime], dict]] = {
    "chat_conversations": _conversation, "analytics_events": _event, "parsed_resumes": _resume,
    "ai_content": _ai_content}


def _documents(name: str, count: int, seed: int, now: dt.datetime) -> Iterator[list[dict]]:
    rng = random.Random(f"{seed}:{name}")
    batch = []
    for i in range(1, count + 1):
        batch.append(BUILDERS[name](rng, i, now))
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def generate(db, size_mb: float, seed: int = 42, now: dt.datetime | None = None) -> dict[str, int]:
    """Drop and rebuild the demo collections of ``db`` (a pymongo Database); return documents per collection."""
    now = now or dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    counts = {}
    for name, (share, doc_bytes) in SHARES.items():
        count = max(50, int(size_mb * 1024 * 1024 * share / doc_bytes))
        db.drop_collection(name)
        for batch in _documents(name, count, seed, now):
            db[name].insert_many(batch, ordered=False)
        for keys, options in INDEXES[name]:
            db[name].create_index(keys, **options)
        counts[name] = count
    return counts


def main(argv: list[str]) -> int:
    sys.path[:0] = [str(Path(__file__).resolve().parents[1])]
    from scripts.stack.mongo import DEMO_DATABASE, mongo_client

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--size-mb", type=float, default=20)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--now", type=dt.date.fromisoformat, default=None)
    parser.add_argument("--database", default=DEMO_DATABASE)
    args = parser.parse_args(argv)
    now = dt.datetime.combine(args.now, dt.time(), dt.timezone.utc) if args.now else None
    with mongo_client() as client:
        counts = generate(client[args.database], args.size_mb, args.seed, now)
    print(f"{args.database}: " + ", ".join(f"{name} {n}" for name, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
