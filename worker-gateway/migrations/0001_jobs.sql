-- Jobs of the worker-gateway: who asked for what, where it stands, and every change of state.
-- The same SQL runs on SQLite and PostgreSQL.
CREATE TABLE jobs (
    id              TEXT PRIMARY KEY,
    owner           TEXT NOT NULL,            -- the verified subject who submitted it
    kind            TEXT NOT NULL,            -- FLOW | SCRIPT
    state           TEXT NOT NULL,            -- QUEUED | RUNNING | SUCCESS | FAILED | CANCELLED
    reason          TEXT NOT NULL DEFAULT '',
    namespace       TEXT NOT NULL DEFAULT '',
    flow_id         TEXT NOT NULL DEFAULT '',
    execution_id    TEXT NOT NULL DEFAULT '',
    idempotency_key TEXT NOT NULL,
    payload         TEXT NOT NULL,            -- the request (inputs, labels, script), JSON
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    UNIQUE (owner, idempotency_key)
);

CREATE INDEX jobs_by_owner ON jobs (owner, created_at);
CREATE INDEX jobs_by_time ON jobs (created_at);

CREATE TABLE job_transitions (
    job_id  TEXT NOT NULL REFERENCES jobs (id),
    state   TEXT NOT NULL,
    reason  TEXT NOT NULL,
    at      BIGINT NOT NULL
);

CREATE INDEX job_transitions_by_job ON job_transitions (job_id);
