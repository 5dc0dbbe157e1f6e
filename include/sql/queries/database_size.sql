-- Size of the current database in GB (GiB: bytes / 1024^3), tables, indexes and TOAST included.
-- pg_database_size() stats the database's files: cheap for normal databases, no locks.
SELECT round(pg_database_size(current_database()) / 1024.0 ^ 3, 3) AS value
