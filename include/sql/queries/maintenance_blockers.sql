-- Parameters: long_seconds, lag_seconds (%% is a literal percent sign for psycopg, also in comments).
-- What would make a rewrite useless or dangerous now: transactions older than long_seconds in this
-- database (they hold back the xmin horizon, so dead rows cannot be removed, and REINDEX CONCURRENTLY waits
-- for them), old prepared transactions, replication slots holding xmin back, replicas lagging more than
-- lag_seconds (a rewrite writes the whole table to WAL).
SELECT 'long transaction' AS kind,
       format('pid %%s (user %%I, application %%L, %%s) in transaction for %%s s', pid, usename, application_name,
              state, round(extract(epoch FROM now() - xact_start))) AS detail,  -- no query text: it may hold secrets
       extract(epoch FROM now() - xact_start)::float8 AS seconds
  FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
   AND xact_start < now() - make_interval(secs => %(long_seconds)s)
UNION ALL
SELECT 'prepared transaction', format('%%s prepared %%s s ago', gid, round(extract(epoch FROM now() - prepared))),
       extract(epoch FROM now() - prepared)::float8
  FROM pg_prepared_xacts
 WHERE database = current_database() AND prepared < now() - make_interval(secs => %(long_seconds)s)
UNION ALL
SELECT 'replication slot', format('inactive slot %%s holds xmin %%s', slot_name, coalesce(xmin, catalog_xmin)), NULL
  FROM pg_replication_slots
 WHERE NOT active AND xmin IS NOT NULL AND (database IS NULL OR database = current_database())
UNION ALL
SELECT 'replication lag', format('replica %%s replays %%s s behind', coalesce(application_name, client_addr::text),
                                 round(extract(epoch FROM replay_lag))),
       extract(epoch FROM replay_lag)::float8
  FROM pg_stat_replication
 WHERE replay_lag > make_interval(secs => %(lag_seconds)s)
