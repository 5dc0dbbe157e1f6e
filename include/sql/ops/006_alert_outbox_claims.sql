-- The notification outbox claims a row (committed) before sending it and records the outcome after,
-- so a failed commit never re-sends. claimed_at is set while a delivery run is sending the row; a
-- claim left by a run that died between the send and the outcome expires and the row is sent again.
ALTER TABLE dbops.alert_notifications ADD COLUMN claimed_at timestamptz;
