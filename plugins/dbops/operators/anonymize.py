"""Anonymization: one user on request (pg_anonymize__), inactive users by policy (pg_anonymize_inactive__)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import closing
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from dbops.operators.base import TargetOperator

if TYPE_CHECKING:
    import psycopg
    from airflow.sdk import Context

    from dbops.core.config import DbopsConfig
    from dbops.hooks.ops import OpsDatabaseHook
    from dbops.lifecycle.anonymize_policy import AnonymizePolicy

MAX_REASON = 500
LOCK_WAIT_SECONDS = 60  # a second anonymization of the same target waits this long, then fails to be retried


def validate_request(user_id: Any, reason: Any) -> tuple[str, str]:
    """The Params ``user_id`` and ``reason``, stripped; a clear failure when unusable (nothing changed)."""
    user_id, reason = str(user_id if user_id is not None else "").strip(), str(reason or "").strip()
    if not user_id or len(user_id) > 200:
        raise AirflowFailException("Param user_id must be the user's key in the users table (1 to 200 characters)")
    if not reason:
        raise AirflowFailException("Param reason is empty: say why, e.g. the ticket of the erasure request")
    if len(reason) > MAX_REASON or "@" in reason:
        raise AirflowFailException(f"Param reason must be at most {MAX_REASON} characters without e-mail addresses: "
                                   "it is kept in the audit trail, which holds no personal data")
    return user_id, reason


class _AnonymizeOperator(TargetOperator):
    """A target operator that needs the target's anonymize policy, its salt and the ops database.

    One anonymization runs at a time per target; another waits ``lock_wait`` seconds, then fails its try
    (never skips: the request must not end green undone) and Airflow retries it.

    :param lock_wait: seconds to wait for another anonymization of the target to finish.
    """

    def __init__(self, *, lock_wait: float = LOCK_WAIT_SECONDS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lock_wait = lock_wait

    def _setup(self) -> tuple[DbopsConfig, AnonymizePolicy, OpsDatabaseHook]:
        from dbops.hooks.ops import OpsDatabaseHook

        config = self.load_config()
        if self.target not in config.targets or config.targets[self.target].anonymize is None:
            raise AirflowFailException(f"target {self.target!r} has no anonymize section in {config.path}")
        return config, config.targets[self.target].anonymize, OpsDatabaseHook(postgres_conn_id=config.ops_conn_id)

    def _target_conn(self, config: DbopsConfig) -> psycopg.Connection:
        from dbops.hooks.postgres import DbopsPostgresHook
        from dbops.lifecycle.session import prepare

        conn = DbopsPostgresHook(postgres_conn_id=config.targets[self.target].conn_id).get_conn()
        prepare(conn)  # UTC, and row-level security raises instead of hiding rows
        return conn

    def _record(self, config: DbopsConfig, ops: OpsDatabaseHook, context: Context, source: str, outcome: str,
                reason: str, keys: list[str], recorded: list[str], rows: dict[str, int],
                at: datetime) -> tuple[datetime, list[dict[str, Any]], str]:
        """Record the users and the event; return when the user was anonymized and the backups holding the data."""
        from dbops.core.errors import classify
        from dbops.lifecycle import anonymize_backups, anonymize_log

        settings = config.targets[self.target]
        exports = self._exports(config, at)
        try:
            with ops.transaction() as conn:
                anonymize_log.record_anonymized(conn, self.target, recorded, at, context["run_id"], source, reason)
                if len(keys) == 1:
                    at = anonymize_log.anonymized_at(conn, self.target, keys[0]) or at
                holding = anonymize_backups.copies_holding(conn, self.target, settings.backup, settings.pitr, at,
                                                           exports)
                backups = anonymize_backups.as_dicts(holding)
                if keys:
                    anonymize_log.record_event(conn, self.target, context["run_id"], source, outcome, reason, keys,
                                               rows, backups)
        except Exception as err:
            raise classify(err, "recording the anonymization in the ops database failed (the target's part is "
                                "committed; a retry finds it done and records it)") from err
        return at, backups, anonymize_backups.describe(holding)

    def _exports(self, config: DbopsConfig, until: datetime) -> list[Any]:
        """The lifecycle exports of the anonymized tables written to the store before ``until``."""
        from dbops.core.errors import classify
        from dbops.lifecycle.anonymize_backups import exports_holding

        lifecycle, policy = config.targets[self.target].lifecycle, config.targets[self.target].anonymize
        if lifecycle is None:
            return []
        try:
            with closing(self._target_conn(config)) as conn:
                return exports_holding(conn, lifecycle, set(policy.tables), until)
        except Exception as err:
            raise classify(err, "listing the lifecycle exports still holding the data failed (the target's part "
                                "is committed; a retry finds it done and records it)") from err


class AnonymizeUserOperator(_AnonymizeOperator):
    """Anonymize one user and every row naming them (base and archive tables) in one transaction.

    A user already anonymized is left as is (the task says so); an unknown user id fails and changes
    nothing. A lock not granted within ``lock_timeout`` rolls everything back and is retried. The user is
    recorded in ``dbops.anonymized_users`` with an audit event; the result lists the backups taken before
    that still hold the data, and when retention will have deleted the last of them.

    :param user_id: the user's key in the users table (Param ``user_id``).
    :param reason: why (Param ``reason``), kept in the audit trail; no personal data.
    """

    template_fields: Sequence[str] = ("target", "user_id", "reason")

    def __init__(self, *, user_id: str, reason: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.user_id = user_id
        self.reason = reason

    def execute(self, context: Context) -> dict[str, Any]:
        from dbops.core.errors import classify
        from dbops.core.locks import job_lock
        from dbops.lifecycle.anonymize import Anonymizer, anonymize_users, find_user, fix_for, load_salt, relations

        user_id, reason = validate_request(self.user_id, self.reason)
        config, policy, ops = self._setup()
        anonymizer = Anonymizer(load_salt(policy.salt_conn_id))
        with job_lock(config.ops_conn_id, self.target, "anonymize", wait_seconds=self.lock_wait,
                      retry_when_busy=True):
            try:
                with closing(self._target_conn(config)) as conn, conn.transaction():
                    found = relations(conn, policy)
                    key = find_user(conn, policy, found, user_id)
                    outcome = anonymize_users(conn, policy, anonymizer, found, [key])
            except AirflowFailException:
                raise
            except Exception as err:
                raise classify(err, f"anonymizing user {user_id} of {self.target} failed and was rolled back "
                                    "(nothing changed)", fix_for(err)) from err
            key = str(key)
            done = "anonymized" if outcome.anonymized else "already_anonymized"
            at, backups, holding = self._record(config, ops, context, "request", done, reason, [key], [key],
                                                outcome.rows, datetime.now(timezone.utc))
        for skipped in outcome.skipped:
            self.log.warning("not searched: %s", skipped)
        rows = ", ".join(f"{label} {n}" for label, n in outcome.rows.items())
        if outcome.anonymized:
            self.log.info("OK: user %s of %s anonymized (rows: %s); %s", key, self.target, rows, holding,
                          rows_total=sum(outcome.rows.values()), backups_holding=len(backups))
        else:
            self.log.info("OK: user %s of %s was already anonymized (at %s); nothing changed; %s", key, self.target,
                          at.isoformat(), holding, backups_holding=len(backups))
        return {"user_key": key, "outcome": done, "anonymized_at": at.isoformat(), "rows": outcome.rows,
                "not_searched": outcome.skipped, "backups_holding": backups}


class AnonymizeInactiveOperator(_AnonymizeOperator):
    """Anonymize the users last active before the run's data interval end minus ``anonymize_after``.

    Users are read in key order and anonymized in batches of ``batch_size``, one short transaction each
    (committed, then recorded in the ops database); users already anonymized are skipped, so a rerun or a
    retry continues where the last one stopped and changes nothing twice. Users whose last activity is
    NULL are never picked.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        from dbops.core.locks import job_lock
        from dbops.core.runs import interval_end

        config, policy, ops = self._setup()
        if policy.anonymize_after is None:
            raise AirflowFailException(f"target {self.target!r} has no anonymize.anonymize_after in {config.path}")
        cutoff = interval_end(context) - timedelta(seconds=policy.anonymize_after)
        with job_lock(config.ops_conn_id, self.target, "anonymize", wait_seconds=self.lock_wait,
                      retry_when_busy=True):
            return self._run(context, config, policy, ops, cutoff)

    def _run(self, context: Context, config: DbopsConfig, policy: AnonymizePolicy, ops: OpsDatabaseHook,
             cutoff: datetime) -> dict[str, Any]:
        from dbops.core.errors import classify
        from dbops.lifecycle.anonymize import Anonymizer, anonymize_users, fix_for, inactive_users, load_salt, \
            relations

        anonymizer = Anonymizer(load_salt(policy.salt_conn_id))
        reason = f"inactive since before {cutoff.isoformat()} (anonymize_after)"
        anonymized, already, batches, rows = 0, 0, 0, {}
        holding = "no user anonymized"
        try:
            with closing(self._target_conn(config)) as conn:
                with conn.transaction():
                    found = relations(conn, policy)
                for relation in found[policy.users.table]:
                    if not {policy.users.key, policy.users.last_active_column} <= relation.columns:
                        continue
                    after = None
                    while True:
                        with conn.transaction():
                            page = inactive_users(conn, policy, relation, cutoff, after, policy.batch_size)
                        if not page:
                            break
                        with conn.transaction():
                            outcome = anonymize_users(conn, policy, anonymizer, found, page)
                        after, batches = page[-1], batches + 1
                        anonymized, already = anonymized + len(outcome.anonymized), already + len(outcome.already)
                        for label, n in outcome.rows.items():
                            rows[label] = rows.get(label, 0) + n
                        if outcome.anonymized or outcome.already:
                            _, _, holding = self._record(
                                config, ops, context, "inactive", "anonymized", reason, outcome.anonymized,
                                outcome.anonymized + outcome.already, outcome.rows, datetime.now(timezone.utc))
        except AirflowFailException:
            raise
        except Exception as err:
            raise classify(err, f"anonymizing inactive users of {self.target} failed; the batch was rolled back, "
                                f"{anonymized} users before it are done", fix_for(err)) from err
        self.log.info("OK: %d users of %s inactive since before %s anonymized in %d batches (%d were already); %s",
                      anonymized, self.target, cutoff.isoformat(), batches, already,
                      holding if anonymized else "no backup holds data of a user anonymized now",
                      anonymized=anonymized, already=already, batches=batches, rows_total=sum(rows.values()))
        return {"cutoff": cutoff.isoformat(), "anonymized": anonymized, "already_anonymized": already,
                "batches": batches, "rows": rows}
