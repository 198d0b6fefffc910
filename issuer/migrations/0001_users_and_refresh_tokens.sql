-- Users of the token issuer, and the refresh tokens it handed out.
-- The same SQL runs on SQLite and PostgreSQL.
--
-- Personal data and secrets are sealed (AES-256-GCM) under the row's own data key, which is
-- itself sealed under a master key named by `master_kid` (see authz/src/sealing.rs). Email
-- lookups go through `email_index`, a keyed hash.
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    roles         TEXT NOT NULL,           -- JSON array of role names
    disabled      BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL,
    master_kid    TEXT NOT NULL,
    data_key      BYTEA NOT NULL,          -- sealed under the master key
    password_hash BYTEA NOT NULL,          -- sealed argon2id PHC string
    email         BYTEA,                   -- sealed
    display_name  BYTEA,                   -- sealed
    email_index   TEXT
);

CREATE INDEX users_email_index ON users (email_index);

-- Refresh tokens are stored only as a SHA-256 hash. A family is one login's chain of
-- rotations: reusing a rotated token revokes the whole family.
CREATE TABLE refresh_tokens (
    token_hash  TEXT PRIMARY KEY,
    family_id   TEXT NOT NULL,
    user_id     TEXT NOT NULL REFERENCES users (id),
    expires_at  BIGINT NOT NULL,
    rotated_at  BIGINT,                    -- set when exchanged for a new one
    revoked_at  BIGINT                     -- set when its family is revoked
);

CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
