-- Alerting (issue 4): the state of every active alert, its transitions, silences, every evaluated
-- value, and the outbox of grouped notifications still to deliver.

-- One row per alert (a rule and a label set) that is pending or firing; an inactive alert has no row.
CREATE TABLE dbops.alert_state (
    target         text             NOT NULL,
    fingerprint    text             NOT NULL,     -- sha256 of the rule name and the sorted labels
    rule           text             NOT NULL,
    labels         jsonb            NOT NULL,
    severity       text             NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    status         text             NOT NULL CHECK (status IN ('pending', 'firing')),
    active_since   timestamptz      NOT NULL,     -- when the breach began
    last_notified  timestamptz,                   -- when people were last told it fires (NULL: never)
    value          double precision NOT NULL,
    summary        text             NOT NULL,
    evaluated_at   timestamptz      NOT NULL,
    PRIMARY KEY (target, fingerprint)
);

-- Every transition people were (or, when silenced, would have been) told about.
CREATE TABLE dbops.alert_events (
    id           bigserial        PRIMARY KEY,
    target       text             NOT NULL,
    run_id       text             NOT NULL,
    at           timestamptz      NOT NULL,
    fingerprint  text             NOT NULL,
    rule         text             NOT NULL,
    labels       jsonb            NOT NULL,
    severity     text             NOT NULL,
    kind         text             NOT NULL CHECK (kind IN ('firing', 'repeat', 'resolved')),
    value        double precision,
    summary      text             NOT NULL
);
CREATE INDEX alert_events_target_at ON dbops.alert_events (target, at DESC);

-- Silences: alerts whose labels match every matcher (label -> full-match regex) are not notified
-- until expires_at. Add one with INSERT; end it early by setting expires_at = now().
CREATE TABLE dbops.alert_silences (
    id          bigserial   PRIMARY KEY,
    target      text,                              -- NULL: every target
    matchers    jsonb       NOT NULL CHECK (jsonb_typeof(matchers) = 'object' AND matchers <> '{}'::jsonb),
    starts_at   timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    created_by  text        NOT NULL,
    comment     text        NOT NULL,
    CHECK (expires_at > starts_at)
);

-- Every evaluated value: one row per query result row and run (history, health-score trend).
CREATE TABLE dbops.metric_samples (
    target      text             NOT NULL,
    metric      text             NOT NULL,        -- the query's name (rules sharing a query share it)
    labels      jsonb            NOT NULL,
    value       double precision NOT NULL,
    sampled_at  timestamptz      NOT NULL
);
CREATE INDEX metric_samples_target_metric_time ON dbops.metric_samples (target, metric, sampled_at DESC);

-- Grouped notifications (one per run and target) waiting for, or done with, delivery per channel.
CREATE TABLE dbops.alert_notifications (
    id            bigserial   PRIMARY KEY,
    target        text        NOT NULL,
    run_id        text        NOT NULL,
    channel       text        NOT NULL,
    created_at    timestamptz NOT NULL,
    severity      text        NOT NULL,
    title         text        NOT NULL,
    body          text        NOT NULL,
    attempts      integer     NOT NULL DEFAULT 0,
    last_error    text,
    delivered_at  timestamptz
);
CREATE INDEX alert_notifications_pending ON dbops.alert_notifications (target, channel, id)
    WHERE delivered_at IS NULL;
