-- Timeline history files (``<timeline>.history``) are shipped beside the WAL segments: recovery needs them to
-- follow a failover or promotion (recovery_target_timeline = 'latest').
ALTER TABLE dbops.wal_segments DROP CONSTRAINT wal_segments_segment_check;
ALTER TABLE dbops.wal_segments ADD CONSTRAINT wal_segments_segment_check
    CHECK (segment ~ '^[0-9A-F]{24}$' OR segment ~ '^[0-9A-F]{8}\.history$');
