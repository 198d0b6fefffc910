-- Every submit counts its owner's unfinished jobs (the per-user bound): by owner and state,
-- not by scanning every job the owner ever had (jobs are kept for their retention period).
CREATE INDEX jobs_live_by_owner ON jobs (owner, state);
