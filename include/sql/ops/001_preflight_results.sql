-- Outcome of every preflight check, per target, so a dead target's history survives it.
CREATE TABLE dbops.preflight_results (
    id          bigserial   PRIMARY KEY,
    target      text        NOT NULL,
    run_id      text        NOT NULL,
    check_name  text        NOT NULL,
    ok          boolean     NOT NULL,
    detail      text        NOT NULL,
    checked_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX preflight_results_target_time ON dbops.preflight_results (target, checked_at DESC);
