#!/usr/bin/env python3
"""Build the deterministic dbops demo database: schema, data, bloat and stale rows.

    python scripts/demo_data.py --size-mb 50 [--seed 42] [--now 2025-06-15] [--dsn "host=... dbname=appdb"]

Connection: libpq environment (PGHOST, PGPORT, PGUSER, PGPASSWORD or PGPASSFILE, PGDATABASE) or
--dsn, which must not contain a password. The demo objects are dropped and recreated
(include/sql/demo/schema.sql), filled with rows from a seeded random.Random through COPY, then
bloated (UPDATE/DELETE on orders, user_sessions and user_events, whose autovacuum is disabled)
and analyzed. The same --seed, --now and --size-mb give the same rows.
Prints one summary line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import itertools
import logging
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

log = logging.getLogger("demo_data")

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "include" / "sql" / "demo" / "schema.sql"
MB = 1024 * 1024
DAY = 86_400
# Fixed part of the database size: a fresh database with the empty demo schema (about 9.6 MB)
# plus catalog and statistics overhead. Row counts depend on the target size only, never on what
# the database held before, so reruns give identical rows.
BASE_BYTES = 17_000_000
# Approximate database bytes (heap, TOAST, indexes, bloat) that one user and its rows add.
BYTES_PER_USER = 31_000
MIN_USERS = 60
COPY_BATCH = 2_000
# Tables left with dead tuples; autovacuum stays off on them for the maintenance DAG to find.
BLOATED_TABLES = ("orders", "user_sessions", "user_events")

FIRST_NAMES = (
    "Ada", "Alan", "Amara", "Bea", "Carlos", "Chen", "Dana", "Elif", "Emil", "Fatima", "Grace",
    "Hana", "Ivan", "Jonas", "Kofi", "Lena", "Liam", "Maya", "Mateo", "Nia", "Noah", "Olga",
    "Priya", "Quinn", "Rosa", "Sami", "Tariq", "Uma", "Vera", "Wei", "Yara", "Zoe",
)
LAST_NAMES = (
    "Adeyemi", "Berg", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Haddad", "Ito",
    "Jensen", "Kowalski", "Larsen", "Moreau", "Nakamura", "Okafor", "Petrov", "Quispe", "Rossi",
    "Schmidt", "Tanaka", "Umarov", "Varga", "Weber", "Xu", "Yilmaz", "Zhang",
)
DOMAINS = ("example.edu", "uni.example.org", "mail.example.com", "college.example.net")
INSTITUTIONS = (
    "Northfield University", "Lakeside College", "Technical Institute of Arden",
    "St. Mira School of Health", "Riverbend Polytechnic", "Open University of Calder",
)
FIELDS = (
    "Computer Science", "Data Engineering", "Nursing", "Mechanical Engineering", "Economics",
    "Public Health", "Education", "Environmental Science", "Business Administration",
    "Graphic Design", "Civil Engineering", "Psychology",
)
LEVELS = (("bachelor", "Bachelor", 3, 4), ("master", "Master", 1, 2), ("phd", "PhD", 3, 5),
          ("certificate", "Certificate", 1, 1), ("diploma", "Diploma", 1, 2))
WORDS = (
    "learning outcome competency assessment module credit semester course curriculum student "
    "faculty lecture seminar laboratory project thesis research analysis design practice theory "
    "evaluation rubric objective skill knowledge understanding application synthesis critical "
    "thinking communication teamwork ethics professional standard accreditation program level "
    "prerequisite elective core requirement portfolio internship capstone workload hours weekly "
    "reading assignment examination quiz feedback grade criteria alignment mapping framework "
    "outcomes based education quality assurance review cycle data statistics programming systems "
    "networks security health patient care clinical safety engineering materials structures energy "
    "sustainability management finance marketing strategy policy society culture history language"
).split()
DOC_KINDS = (("syllabus", "pdf", "application/pdf"), ("handbook", "pdf", "application/pdf"),
             ("outline", "docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
             ("notes", "txt", "text/plain"), ("rubric", "xlsx",
              "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"))
ANALYSIS_TYPES = ("curriculum_alignment", "gap_analysis", "competency_mapping",
                  "learning_outcomes", "assessment_alignment")
REPORT_TYPES = ("alignment_report", "gap_analysis_report", "competency_report",
                "summary_report", "detailed_report")
ANALYSIS_ERRORS = ("document parsing failed", "timeout after 300 s", "no learning outcomes found",
                   "worker terminated")
EVENT_TYPES = (("page_view", 40), ("login", 8), ("logout", 6), ("study_session_started", 10),
               ("study_session_completed", 8), ("assignment_created", 5),
               ("assignment_completed", 5), ("lecture_viewed", 10), ("reminder_sent", 6),
               ("course_enrolled", 2))
EVENT_SOURCES = (("web", 55), ("ios", 20), ("android", 17), ("bot", 8))
ACTIVITIES = ("lecture", "quiz", "reading", "practice", "video", "flashcards")
DEVICES = ("desktop", "tablet", "phone")
TENANT_WORDS = ("golden", "spice", "harbor", "urban", "maple", "sakura", "olive", "ember",
                "copper", "basil", "lotus", "pepper")
TENANT_NOUNS = ("kitchen", "bistro", "grill", "noodles", "pizza", "deli", "tacos", "cafe")
PLANS = (("standard", 60), ("premium", 30), ("enterprise", 10))
CURRENCIES = ("USD", "CAD", "EUR")
MENU = (("SKU-101", "Margherita pizza", 12.50), ("SKU-102", "Pad thai", 11.90),
        ("SKU-103", "Caesar salad", 8.75), ("SKU-104", "Burger deluxe", 13.40),
        ("SKU-105", "Sushi set", 18.00), ("SKU-106", "Falafel wrap", 7.95),
        ("SKU-107", "Ramen", 12.80), ("SKU-108", "Lemonade", 3.50), ("SKU-109", "Tiramisu", 6.25))
ORDER_STATUSES = (("delivered", 45), ("confirmed", 20), ("preparing", 18), ("pending", 7),
                  ("cancelled", 6), ("refunded", 4))
PAY_METHODS = (("card", 62), ("paypal", 12), ("apple_pay", 12), ("google_pay", 9), ("cash", 5))
AUDIT_TABLES = ("orders", "payments", "users", "user_sessions", "programs", "documents")
AUDIT_ACTIONS = (("update", 45), ("insert", 30), ("login", 10), ("logout", 8), ("delete", 6),
                 ("anonymize", 1))
USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/128.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) Chrome/127.0 Mobile",
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "okhttp/4.12.0",
)
NULL = "\\N"

_V4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_V4_SET = (0x4000 << 64) | (0x8000 << 48)
_TIME_OF_DAY = [f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(DAY)]


def uuid4(rng: random.Random) -> str:
    """Version-4 UUID text drawn from the seeded generator."""
    h = f"{(rng.getrandbits(128) & _V4_CLEAR) | _V4_SET:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@functools.lru_cache(maxsize=4096)
def _date_text(day: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()


def midnight_utc(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def ts(epoch: int) -> str:
    """COPY text for a UTC timestamptz given in whole epoch seconds."""
    return f"{_date_text(epoch // DAY)} {_TIME_OF_DAY[epoch % DAY]}+00"


def timeline(rng: random.Random, n: int, start: int, end: int, skew: float) -> Iterator[int]:
    """n ascending epoch seconds in [start, end]; skew > 1 packs more of them near end."""
    span = end - start
    for i in range(n):
        yield end - int(span * (1.0 - (i + rng.random()) / n) ** skew)


def weighted(rng: random.Random, options: tuple[tuple[str, int], ...], k: int) -> list[str]:
    """k draws from (value, weight) pairs."""
    values, weights = zip(*options, strict=True)
    return rng.choices(values, weights=weights, k=k)


def ipv4(rng: random.Random) -> str:
    return f"{rng.randint(11, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randint(1, 254)}"


def words(rng: random.Random, k: int) -> str:
    return " ".join(rng.choices(WORDS, k=k))


def row_counts(size_mb: float) -> dict[str, int]:
    """Rows per table for a target database size; depends on the size only."""
    u = max(MIN_USERS, round((size_mb * MB - BASE_BYTES) / BYTES_PER_USER))
    return {
        "tenants": min(200, max(5, u // 100)), "users": u, "programs": max(10, u // 10),
        "documents": u // 2, "analysis_results": u // 2, "reports": u // 5,
        "user_events": u * 40, "learning_sessions": u * 15, "orders": u * 8,
        "audit_logs": u * 10, "user_sessions": u * 6,
    }


@dataclass
class Ctx:
    """Seed, clock and the ids that later tables reference."""

    seed: int
    now: int
    counts: dict[str, int]
    tenant_ids: list[str] = field(default_factory=list)
    user_ids: list[str] = field(default_factory=list)
    staff_ids: list[str] = field(default_factory=list)
    program_ids: list[str] = field(default_factory=list)
    analyses: list[tuple[str, str]] = field(default_factory=list)
    # (order id, tenant id, total, created epoch, status, currency) for payments
    orders: list[tuple[str, str, str, int, str, str]] = field(default_factory=list)

    def rng(self, table: str) -> random.Random:
        """An independent generator per table, so tables do not shift each other's rows."""
        return random.Random(f"{self.seed}:{table}")

    def years_ago(self, years: float) -> int:
        return self.now - int(years * 365 * DAY)


def gen_tenants(ctx: Ctx) -> Iterator[str]:
    rng = ctx.rng("tenants")
    n = ctx.counts["tenants"]
    plans = weighted(rng, PLANS, n)
    for i, created in enumerate(timeline(rng, n, ctx.years_ago(5), ctx.years_ago(1), 1.0)):
        tid = uuid4(rng)
        ctx.tenant_ids.append(tid)
        word, noun = rng.choice(TENANT_WORDS), rng.choice(TENANT_NOUNS)
        yield f"{tid}\t{word}-{noun}-{i}\t{word.title()} {noun.title()} #{i}\t{plans[i]}\t{ts(created)}\n"


def gen_users(ctx: Ctx) -> Iterator[str]:
    rng = ctx.rng("users")
    for i, created in enumerate(timeline(rng, ctx.counts["users"], ctx.years_ago(3), ctx.now, 1.5)):
        uid = uuid4(rng)
        ctx.user_ids.append(uid)
        r = rng.random()
        role = "admin" if i == 0 or r < 0.02 else "faculty" if r < 0.2 else "user"
        if role != "user":
            ctx.staff_ids.append(uid)
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        sso = f"sso|{rng.getrandbits(64):016x}" if rng.random() < 0.6 else NULL
        updated = created + int(rng.random() * (ctx.now - created))
        login = ts(created + int(rng.random() * (ctx.now - created))) if rng.random() < 0.9 else NULL
        active = "t" if rng.random() < 0.93 else "f"
        yield (f"{uid}\t{first.lower()}.{last.lower()}.{i}@{rng.choice(DOMAINS)}\t{first} {last}\t"
               f"{role}\t{sso}\t{ts(created)}\t{ts(updated)}\t{login}\t{active}\n")


def gen_programs(ctx: Ctx) -> Iterator[str]:
    rng = ctx.rng("programs")
    for created in timeline(rng, ctx.counts["programs"], ctx.years_ago(3), ctx.now, 1.2):
        pid = uuid4(rng)
        ctx.program_ids.append(pid)
        level, title, min_years, max_years = rng.choice(LEVELS)
        subject = rng.choice(FIELDS)
        updated = created + int(rng.random() * (ctx.now - created))
        active = "t" if rng.random() < 0.9 else "f"
        yield (f"{pid}\t{title} in {subject}\t{subject} program covering {words(rng, 12)}\t"
               f"{rng.choice(INSTITUTIONS)}\t{level}\t{rng.randint(min_years, max_years)}\t"
               f"{rng.choice(ctx.staff_ids)}\t{ts(created)}\t{ts(updated)}\t{active}\n")


def gen_documents(ctx: Ctx) -> Iterator[str]:
    rng = ctx.rng("documents")
    n = ctx.counts["documents"]
    statuses = weighted(rng, (("completed", 85), ("failed", 5), ("processing", 5), ("pending", 5)), n)
    for i, uploaded in enumerate(timeline(rng, n, ctx.years_ago(3), ctx.now, 1.3)):
        did, program = uuid4(rng), rng.choice(ctx.program_ids)
        kind, ext, mime = rng.choice(DOC_KINDS)
        name = f"{rng.choice(FIELDS).lower().replace(' ', '_')}_{kind}_{i}.{ext}"
        text = words(rng, rng.randint(80, 700)) if statuses[i] == "completed" else NULL
        meta = (f'{{"pages": {rng.randint(1, 240)}, "language": "en", '
                f'"sha256": "{rng.getrandbits(256):064x}"}}')
        yield (f"{did}\t{name}\t/data/programs/{program}/{did}.{ext}\t{rng.randint(20_000, 20_000_000)}\t"
               f"{mime}\t{program}\t{rng.choice(ctx.user_ids)}\t{ts(uploaded)}\t{statuses[i]}\t"
               f"{text}\t{meta}\n")


def gen_analysis_results(ctx: Ctx) -> Iterator[str]:
    rng = ctx.rng("analysis_results")
    n = ctx.counts["analysis_results"]
    statuses = weighted(rng, (("completed", 80), ("failed", 6), ("running", 4), ("pending", 6),
                              ("cancelled", 4)), n)
    for i, created in enumerate(timeline(rng, n, ctx.years_ago(3), ctx.now, 1.3)):
        aid, program, status = uuid4(rng), rng.choice(ctx.program_ids), statuses[i]
        ctx.analyses.append((aid, program))
        params = (f'{{"framework": "{rng.choice(("bloom", "solo", "eqf", "abet"))}", '
                  f'"threshold": {rng.random():.2f}, "include_electives": {rng.choice(("true", "false"))}}}')
        comps = ", ".join(f'"{w}": {rng.random():.3f}' for w in rng.sample(WORDS, 5))
        results = f'{{"score": {rng.random():.3f}, "gaps": {rng.randint(0, 12)}, "competencies": {{{comps}}}}}'
        ms = rng.randint(200, 300_000)
        done = status in ("completed", "failed")
        error = rng.choice(ANALYSIS_ERRORS) if status == "failed" else NULL
        yield (f"{aid}\t{program}\t{rng.choice(ANALYSIS_TYPES)}\t{params}\t{results}\t{status}\t"
               f"{rng.choice(ctx.staff_ids)}\t{ts(created)}\t{ts(created + ms // 1000) if done else NULL}\t"
               f"{ms if done else NULL}\t{error}\n")


def gen_reports(ctx: Ctx) -> Iterator[str]:
    rng = ctx.rng("reports")
    for i, created in enumerate(timeline(rng, ctx.counts["reports"], ctx.years_ago(3), ctx.now, 1.3)):
        rid, rtype = uuid4(rng), rng.choice(REPORT_TYPES)
        analysis, program = rng.choice(ctx.analyses)
        content = (f'{{"summary": "{words(rng, 25)}", "sections": {rng.randint(2, 12)}, '
                   f'"score": {rng.random():.3f}}}')
        path = f"/reports/{rid}.pdf" if rng.random() < 0.7 else NULL
        generated = ts(created + rng.randint(5, 900)) if rng.random() < 0.9 else NULL
        public = "t" if rng.random() < 0.2 else "f"
        yield (f"{rid}\t{rtype.replace('_', ' ').title()} {i}\t{rtype}\t{program}\t{analysis}\t"
               f"{content}\t{path}\t{rng.choice(ctx.staff_ids)}\t{ts(created)}\t{generated}\t{public}\n")


def gen_user_events(ctx: Ctx) -> Iterator[str]:
    rng = ctx.rng("user_events")
    n = ctx.counts["user_events"]
    types, sources = weighted(rng, EVENT_TYPES, n), weighted(rng, EVENT_SOURCES, n)
    # 240 days: page views on both sides of their 180-day retention
    for i, created in enumerate(timeline(rng, n, ctx.now - 240 * DAY, ctx.now, 2.0)):
        etype = types[i]
        entity, eid = ("course", uuid4(rng)) if etype != "page_view" else (NULL, NULL)
        data = (f'{{"source": "{sources[i]}", "duration_ms": {rng.randint(5, 90_000)}, '
                f'"path": "/{rng.choice(WORDS)}/{rng.randrange(10_000)}"}}')
        yield f"{rng.choice(ctx.user_ids)}\t{etype}\t{entity}\t{eid}\t{data}\t{ts(created)}\n"


def gen_learning_sessions(ctx: Ctx) -> Iterator[str]:
    rng = ctx.rng("learning_sessions")
    today = dt.datetime.fromtimestamp(ctx.now, dt.UTC).date()
    start = int(midnight_utc(dt.date(today.year - 1, today.month, 1)).timestamp())  # first partition
    for begin in timeline(rng, ctx.counts["learning_sessions"], start, ctx.now, 1.2):
        activity = rng.choice(ACTIVITIES)
        seconds = rng.randint(120, 7_200)
        finished = rng.random() < 0.9
        program = rng.choice(ctx.program_ids) if rng.random() < 0.8 else NULL
        score = f"{rng.uniform(20, 100):.2f}" if activity == "quiz" and finished else NULL
        meta = f'{{"device": "{rng.choice(DEVICES)}", "items": {rng.randint(1, 60)}}}'
        yield (f"{rng.choice(ctx.user_ids)}\t{program}\t{activity}\t{ts(begin)}\t"
               f"{ts(begin + seconds) if finished else NULL}\t{seconds if finished else NULL}\t"
               f"{score}\t{'t' if finished else 'f'}\t{meta}\n")


def gen_orders(ctx: Ctx) -> Iterator[str]:
    rng = ctx.rng("orders")
    n = ctx.counts["orders"]
    statuses = weighted(rng, ORDER_STATUSES, n)
    tenant_weights = [1 / (k + 1) for k in range(len(ctx.tenant_ids))]
    tenants = rng.choices(ctx.tenant_ids, weights=tenant_weights, k=n)
    # 7.5 years: rows on both sides of the lifecycle cutoffs (archive after 3 years, retention 7 years)
    for i, created in enumerate(timeline(rng, n, ctx.years_ago(7.5), ctx.now, 2.0)):
        oid, tenant, status = uuid4(rng), tenants[i], statuses[i]
        currency = CURRENCIES[int(tenant[:2], 16) % len(CURRENCIES)]
        lines, subtotal = [], 0.0
        for sku, name, price in rng.sample(MENU, rng.randint(1, 4)):
            qty = rng.randint(1, 3)
            subtotal += qty * price
            lines.append(f'{{"sku": "{sku}", "name": "{name}", "qty": {qty}, "price": {price:.2f}}}')
        tax = round(subtotal * 0.08, 2)
        total = f"{subtotal + tax:.2f}"
        ctx.orders.append((oid, tenant, total, created, status, currency))
        user = rng.choice(ctx.user_ids) if rng.random() < 0.95 else NULL
        yield (f"{oid}\t{tenant}\t{user}\tORD-{i:09d}\t{status}\t{currency}\t{subtotal:.2f}\t{tax:.2f}\t"
               f"{total}\t[{', '.join(lines)}]\t{ts(created)}\t{ts(created + rng.randint(30, 3_600))}\n")


def gen_payments(ctx: Ctx) -> Iterator[str]:
    rng = ctx.rng("payments")
    methods = weighted(rng, PAY_METHODS, len(ctx.orders))
    for (oid, tenant, total, created, status, currency), method in zip(ctx.orders, methods, strict=True):
        if status == "pending" or (status == "cancelled" and rng.random() < 0.5):
            continue
        pay_status = {"cancelled": "failed", "refunded": "refunded"}.get(status, "captured")
        at = created + rng.randint(5, 120)
        yield (f"{uuid4(rng)}\t{tenant}\t{oid}\t{total}\t{currency}\t{method}\t{pay_status}\t"
               f"pi_{rng.getrandbits(96):024x}\t{ts(at)}\t{ts(at + rng.randint(1, 10))}\n")


def gen_audit_logs(ctx: Ctx) -> Iterator[str]:
    rng = ctx.rng("audit_logs")
    n = ctx.counts["audit_logs"]
    actions = weighted(rng, AUDIT_ACTIONS, n)
    # 7.5 years: rows on both sides of the lifecycle cutoffs (archive after 2 years, retention 7 years)
    for i, created in enumerate(timeline(rng, n, ctx.years_ago(7.5), ctx.now, 2.0)):
        action = actions[i]
        old = f'{{"status": "{rng.choice(ORDER_STATUSES)[0]}", "version": {rng.randint(1, 9)}}}'
        by = rng.choice(("api", "admin", "system"))
        new = f'{{"status": "{rng.choice(ORDER_STATUSES)[0]}", "changed_by": "{by}"}}'
        old_values = old if action in ("update", "delete", "anonymize") else NULL
        new_values = NULL if action == "delete" else new
        user = rng.choice(ctx.user_ids) if rng.random() < 0.9 else NULL
        yield (f"{rng.choice(ctx.tenant_ids)}\t{user}\t{rng.choice(AUDIT_TABLES)}\t{uuid4(rng)}\t"
               f"{action}\t{old_values}\t{new_values}\t{ipv4(rng)}\t{ts(created)}\n")


def gen_user_sessions(ctx: Ctx) -> Iterator[str]:
    rng = ctx.rng("user_sessions")
    for created in timeline(rng, ctx.counts["user_sessions"], ctx.now - 180 * DAY, ctx.now, 1.5):
        seen = min(ctx.now, created + rng.randint(60, 7 * DAY))
        revoked = ts(seen) if rng.random() < 0.12 else NULL
        yield (f"{uuid4(rng)}\t{rng.choice(ctx.tenant_ids)}\t{rng.choice(ctx.user_ids)}\t"
               f"{rng.getrandbits(256):064x}\t{ipv4(rng)}\t{rng.choice(USER_AGENTS)}\t{ts(created)}\t"
               f"{ts(seen)}\t{ts(created + 30 * DAY)}\t{revoked}\n")


@dataclass(frozen=True)
class Table:
    """A demo table: its COPY columns and its row generator."""

    name: str
    columns: tuple[str, ...]
    rows: Callable[[Ctx], Iterator[str]]


# Load order follows the foreign keys.
TABLES = (
    Table("tenants", ("id", "slug", "name", "plan", "created_at"), gen_tenants),
    Table("users", ("id", "email", "name", "role", "sso_id", "created_at", "updated_at",
                    "last_login", "is_active"), gen_users),
    Table("programs", ("id", "name", "description", "institution", "level", "duration_years",
                       "created_by", "created_at", "updated_at", "is_active"), gen_programs),
    Table("documents", ("id", "name", "file_path", "file_size", "mime_type", "program_id",
                        "uploaded_by", "upload_date", "processing_status", "extracted_text",
                        "metadata"), gen_documents),
    Table("analysis_results", ("id", "program_id", "analysis_type", "parameters", "results",
                               "status", "created_by", "created_at", "completed_at",
                               "execution_time_ms", "error_message"), gen_analysis_results),
    Table("reports", ("id", "name", "type", "program_id", "analysis_id", "content", "file_path",
                      "created_by", "created_at", "generated_at", "is_public"), gen_reports),
    Table("user_events", ("user_id", "event_type", "entity_type", "entity_id", "event_data",
                          "created_at"), gen_user_events),
    Table("learning_sessions", ("user_id", "program_id", "activity_type", "start_time", "end_time",
                                "duration_seconds", "score", "completed", "metadata"),
          gen_learning_sessions),
    Table("orders", ("id", "tenant_id", "user_id", "order_number", "status", "currency", "subtotal",
                     "tax", "total", "items", "created_at", "updated_at"), gen_orders),
    Table("payments", ("id", "tenant_id", "order_id", "amount", "currency", "method", "status",
                       "provider_ref", "created_at", "processed_at"), gen_payments),
    Table("audit_logs", ("tenant_id", "user_id", "table_name", "record_id", "action", "old_values",
                         "new_values", "ip_address", "created_at"), gen_audit_logs),
    Table("user_sessions", ("id", "tenant_id", "user_id", "token_hash", "ip_address", "user_agent",
                            "created_at", "last_seen_at", "expires_at", "revoked_at"),
          gen_user_sessions),
)
TABLE_NAMES = [t.name for t in TABLES]

# Deterministic changes after the load: (table, statement); %(now)s is the reference time.
BLOAT_STATEMENTS = (
    ("orders", "UPDATE orders SET status = 'delivered', updated_at = updated_at + interval '40 minutes'"
               " WHERE status IN ('confirmed', 'preparing')"),
    ("user_sessions", "UPDATE user_sessions SET last_seen_at = least(last_seen_at + interval '2 hours', %(now)s),"
                      " expires_at = expires_at + interval '7 days'"
                      " WHERE revoked_at IS NULL AND created_at >= %(now)s - interval '60 days'"),
    ("user_sessions", "DELETE FROM user_sessions WHERE revoked_at IS NOT NULL"),
    ("user_events", "DELETE FROM user_events WHERE event_data->>'source' = 'bot'"),
)


def copy_rows(cur: psycopg.Cursor, table: Table, ctx: Ctx) -> int:
    """COPY the table's generated rows in batches; returns the row count."""
    stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table.name),
        sql.SQL(", ").join(map(sql.Identifier, table.columns)),
    )
    rows = table.rows(ctx)
    total = 0
    with cur.copy(stmt) as copy:
        while batch := list(itertools.islice(rows, COPY_BATCH)):
            copy.write("".join(batch))
            total += len(batch)
    return total


def deferred_ddl(cur: psycopg.Cursor) -> tuple[list[sql.Composable], list[sql.Composable]]:
    """Drop secondary indexes and foreign keys of the demo tables; return the DDL to restore them.

    Loading without them and building them afterwards is several times faster than maintaining
    them row by row. Indexes of the partitioned table stay (their definitions are per partition).
    """
    cur.execute(
        """SELECT t.relname, c.conname, pg_get_constraintdef(c.oid)
             FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
            WHERE c.contype = 'f' AND c.conparentid = 0 AND t.relname = ANY(%s)
              AND t.relnamespace = current_schema()::regnamespace
            ORDER BY 1, 2""", (TABLE_NAMES,))
    fks = cur.fetchall()
    cur.execute(
        """SELECT i.relname, pg_get_indexdef(i.oid)
             FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
            WHERE t.relname = ANY(%s) AND t.relkind = 'r' AND NOT t.relispartition
              AND t.relnamespace = current_schema()::regnamespace
              AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid
                                                              AND c.contype IN ('p', 'u', 'x'))
            ORDER BY 1""", (TABLE_NAMES,))
    indexes = cur.fetchall()
    for table, name, _ in fks:
        cur.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(sql.Identifier(table), sql.Identifier(name)))
    for name, _ in indexes:
        cur.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
    restore_indexes = [sql.SQL(definition) for _, definition in indexes]
    restore_fks = [sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
        sql.Identifier(table), sql.Identifier(name), sql.SQL(definition)) for table, name, definition in fks]
    return restore_indexes, restore_fks


def create_schema(cur: psycopg.Cursor, now: dt.date) -> None:
    """Drop and recreate the demo objects; partitions are laid out around `now`."""
    cur.execute("SELECT set_config('dbops.demo_now', %s, true)", (now.isoformat(),))
    cur.execute(SCHEMA_FILE.read_text())
    for table in BLOATED_TABLES:
        cur.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = false)").format(sql.Identifier(table)))


def database_size(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def load(conn: psycopg.Connection, size_mb: float, seed: int, now: dt.date) -> dict[str, int]:
    """Recreate the schema and fill it in one transaction; returns rows per table."""
    ctx = Ctx(seed=seed, now=int(midnight_utc(now).timestamp()), counts=row_counts(size_mb))
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SET LOCAL maintenance_work_mem = '256MB'")
        create_schema(cur, now)
        restore_indexes, restore_fks = deferred_ddl(cur)
        rows = {}
        for table in TABLES:
            started = time.monotonic()
            rows[table.name] = copy_rows(cur, table, ctx)
            log.info("loaded %s rows=%d seconds=%.1f", table.name, rows[table.name], time.monotonic() - started)
        started = time.monotonic()
        for statement in restore_indexes + restore_fks:
            cur.execute(statement)
        log.info("built indexes=%d foreign_keys=%d seconds=%.1f",
                 len(restore_indexes), len(restore_fks), time.monotonic() - started)
        rows.update(load_partition_demo(cur, now))
    return rows


# Partition-management demo (pg_partitions__appdb): a few rows per partition, some in the DEFAULT
# partitions (ranges the DAG will create, so it moves them; and ranges it never plans, so they stay and
# alert), deterministic: generated from the reference date alone.
PARTITION_DEMO = {
    "assessment_attempts": """
        INSERT INTO assessment_attempts (user_id, assessment, started_at, submitted_at, score)
        SELECT u.ids[1 + g %% array_length(u.ids, 1)], 'quiz ' || (g %% 7),
               t.at, t.at + interval '25 minutes', (g * 37 %% 100)::numeric
        FROM (SELECT array_agg(id ORDER BY email) AS ids FROM users) u,
             generate_series(0, 539) g,
             LATERAL (SELECT date_trunc('month', %(now)s::timestamptz) - interval '15 months'
                             + (g / 30) * interval '1 month' + (g %% 30) * interval '20 hours' AS at) t
        UNION ALL  -- 2 and 3 months ahead: no partition yet, DEFAULT (the DAG creates them and moves these)
        SELECT u.ids[1 + g %% array_length(u.ids, 1)], 'placement', t.at, NULL, NULL
        FROM (SELECT array_agg(id ORDER BY email) AS ids FROM users) u, generate_series(0, 23) g,
             LATERAL (SELECT date_trunc('month', %(now)s::timestamptz) + interval '2 months'
                             + (g / 12) * interval '1 month' + (g %% 12) * interval '2 days' AS at) t""",
    "page_views": """
        INSERT INTO page_views (viewed_at, path)
        SELECT %(now)s::timestamptz - interval '40 days' + g * interval '1 hour', '/course/' || (g %% 50)
        FROM generate_series(0, 41 * 24 - 1) g
        UNION ALL  -- 3 and 4 days ahead: DEFAULT, moved by the DAG
        SELECT %(now)s::timestamptz + interval '3 days' + g * interval '2 hours', '/launch/' || g
        FROM generate_series(0, 23) g
        UNION ALL  -- far in the past: DEFAULT, belongs to no planned range: stays, reported and alerted
        SELECT %(now)s::timestamptz - interval '400 days' + g * interval '1 hour', '/legacy/' || g
        FROM generate_series(0, 4) g""",
}


def load_partition_demo(cur: psycopg.Cursor, now: dt.date) -> dict[str, int]:
    """Fill the partition-management demo tables; returns rows per table."""
    rows = {}
    for table, statement in PARTITION_DEMO.items():
        cur.execute(statement, {"now": midnight_utc(now)})
        rows[table] = cur.rowcount
    return rows


def bloat(conn: psycopg.Connection, now: dt.date, rows: dict[str, int]) -> None:
    """Apply the post-load UPDATEs/DELETEs that leave dead tuples; adjusts `rows` for deletes."""
    with conn.transaction(), conn.cursor() as cur:
        for table, statement in BLOAT_STATEMENTS:
            cur.execute(statement, {"now": midnight_utc(now)})
            log.info("bloat %s: %s", table, cur.statusmessage)
            if cur.statusmessage.startswith("DELETE"):
                rows[table] -= cur.rowcount


def connect(dsn: str) -> psycopg.Connection:
    if "password" in conninfo_to_dict(dsn):
        raise SystemExit("demo_data: do not put a password in --dsn; use PGPASSWORD or PGPASSFILE")
    return psycopg.connect(dsn, autocommit=True, application_name="dbops_demo_data")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=50, help="target database size (default 50)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument("--now", type=dt.date.fromisoformat, default=dt.datetime.now(dt.UTC).date(),
                        help="reference date YYYY-MM-DD for all timestamps and partitions (default today, UTC)")
    parser.add_argument("--dsn", default="", help="libpq conninfo without password (default: PG* environment)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    started = time.monotonic()
    with connect(args.dsn) as conn:
        rows = load(conn, args.size_mb, args.seed, args.now)
        bloat(conn, args.now, rows)
        conn.execute("ANALYZE")
        conn.execute("SELECT pg_stat_force_next_flush()")  # dead-tuple counts visible to others at once
        size = database_size(conn)
    counts = " ".join(f"{name}={count}" for name, count in rows.items())
    print(f"demo_data: size_mb={size / MB:.1f} seconds={time.monotonic() - started:.1f} "
          f"seed={args.seed} now={args.now} rows: {counts}")


if __name__ == "__main__":
    main()
