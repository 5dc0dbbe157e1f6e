-- Users anonymized in each target (pg_anonymize__ on request, pg_anonymize_inactive__ by anonymize_after)
-- and the audit trail of every anonymization. No personal data: user_key is the target's own key of the
-- user, a pseudonymous id that the anonymized rows still carry (nothing more is revealed by keeping it);
-- it is kept so an anonymization can be applied again after restoring a backup taken before it.
-- E-mail, names and every other anonymized value are never stored here.
CREATE TABLE dbops.anonymized_users (
    target         text        NOT NULL,
    user_key       text        NOT NULL,
    anonymized_at  timestamptz NOT NULL,             -- just after the target's transaction committed
    run_id         text        NOT NULL,
    source         text        NOT NULL CHECK (source IN ('request', 'inactive')),
    reason         text        NOT NULL,             -- the request's reason, or the policy (anonymize_after)
    PRIMARY KEY (target, user_key)
);

CREATE TABLE dbops.anonymization_events (
    id          bigserial   PRIMARY KEY,
    target      text        NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    run_id      text        NOT NULL,
    source      text        NOT NULL CHECK (source IN ('request', 'inactive')),
    outcome     text        NOT NULL CHECK (outcome IN ('anonymized', 'already_anonymized')),
    reason      text        NOT NULL,
    user_keys   text[]      NOT NULL,
    rows        jsonb       NOT NULL,                -- rows rewritten per table, e.g. {"archive.orders": 3}
    backups     jsonb       NOT NULL                 -- backups taken before, each with its forecast deletion
);
CREATE INDEX anonymization_events_target_at ON dbops.anonymization_events (target, at DESC);
