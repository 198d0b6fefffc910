-- Usernames are compared and stored case-folded (lower case). The issuer refuses to run this
-- migration while two usernames differ only by case (it lists them): merging accounts is a
-- decision for an operator, not for a migration.
UPDATE users SET username = LOWER(username);

-- One row per login chain (family). Rotation, reuse detection and revocation update this row
-- first, inside one transaction, so a revoked family stays revoked whatever is in flight; and
-- a family ends at `expires_at` however often it is refreshed (absolute lifetime).
CREATE TABLE refresh_families (
    family_id   TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users (id),
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    rotations   BIGINT NOT NULL DEFAULT 0,
    revoked_at  BIGINT
);

-- Families of the tokens already issued: their life ends with their newest token.
INSERT INTO refresh_families (family_id, user_id, created_at, expires_at, revoked_at)
SELECT family_id, MIN(user_id), MIN(expires_at), MAX(expires_at), MAX(revoked_at)
FROM refresh_tokens
GROUP BY family_id;
