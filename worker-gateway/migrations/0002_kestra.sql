-- What the gateway needs to hand a flow job to Kestra exactly once and follow it: attempts are
-- recorded before each create is sent (a restart then knows a create may have reached Kestra
-- and reconciles before sending another), Kestra's own state and the flow's outputs, and a
-- cancel asked for while the execution is being created or killed.
ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN last_attempt_ms BIGINT NOT NULL DEFAULT 0;
-- 1 from the moment an attempt is recorded until it is known not to have reached Kestra.
ALTER TABLE jobs ADD COLUMN attempt_pending INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN kestra_state TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN outputs TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN cancel_requested_by TEXT NOT NULL DEFAULT '';
CREATE INDEX jobs_live ON jobs (kind, state, updated_at);
