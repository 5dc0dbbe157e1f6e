-- The last failure notification of each DAG task whose notifier has a repeat interval (db_alerts__*):
-- a task failing again with the same error is notified once per incident, not on every run. Another
-- error, or the same one after the repeat interval, is notified again.
CREATE TABLE dbops.failure_notifications (
    dag_id       text        NOT NULL,
    task_id      text        NOT NULL,             -- '' for a failure of the DAG run itself
    target       text        NOT NULL,
    error        text        NOT NULL,             -- the error as last notified
    notified_at  timestamptz NOT NULL,
    suppressed   integer     NOT NULL DEFAULT 0,   -- failures with that error not notified since
    PRIMARY KEY (dag_id, task_id)
);
