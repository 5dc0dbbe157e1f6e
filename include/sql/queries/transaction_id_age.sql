-- Transaction ID wraparound: the age of the current database's oldest unfrozen transaction ID
-- (age(datfrozenxid)) or multixact ID (mxid_age(datminmxid)), whichever is larger, in percent of the
-- 2^31 IDs (2147483648) after which PostgreSQL would wrap around (it stops assigning IDs ~3 million
-- before). With the default autovacuum_freeze_max_age of 200 million, anti-wraparound autovacuum
-- starts at ~9.3 %; a healthy database stays below ~10-15 %.
-- Cheap: one row of pg_database, no locks.
SELECT round(100.0 * greatest(age(datfrozenxid), mxid_age(datminmxid)) / 2147483648, 2) AS value
FROM pg_database
WHERE datname = current_database()
