//! The issuer's store: users (argon2id password hashes, roles, personal data) and
//! refresh-token families. Embedded SQLite by default (file created and migrated on first
//! run), PostgreSQL when a `postgres://` URL is given (`qiria_store::db`). Personal data and
//! password hashes are sealed before they are written (`qiria_store::sealing`): the database
//! never holds them in the clear.
//!
//! A refresh family is a row of its own. Rotation, reuse detection and revocation each run in
//! one transaction that updates the family row first: on PostgreSQL that row lock orders
//! concurrent refreshes of one family, on SQLite the single connection does; so exactly one of
//! N concurrent refreshes of a token wins, and a family revoked while a refresh is in flight
//! stays revoked, its newest token included.

use std::sync::Arc;

use qiria_runtime::clock::now_i64;
use qiria_store::db::{self, DbError};
use qiria_store::sealing::{MasterKeys, SealError, SealedKey};
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

/// The issuer's migrations, compiled in.
static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Usernames: 1 to 64 ASCII letters, digits, `.`, `_`, `-` or `@`, starting with a letter or
/// digit; compared and stored in lower case. Returns the stored form, or what is wrong.
pub fn fold_username(username: &str) -> Result<String, &'static str> {
    let folded = username.to_ascii_lowercase();
    let first_ok = folded.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    let rest_ok = folded.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_@".contains(&b));
    if folded.is_empty() || folded.len() > 64 || !first_ok || !rest_ok {
        return Err("1 to 64 ASCII letters, digits, '.', '_', '-' or '@', starting with a letter or digit");
    }
    Ok(folded)
}

/// A user as the issuer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Stable id (the token's `sub`).
    pub id: String,
    /// Login name.
    pub username: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Role names.
    pub roles: Vec<String>,
    /// A disabled user can neither log in nor refresh.
    pub disabled: bool,
    /// Email address (personal data: sealed at rest).
    pub email: Option<String>,
    /// Display name (personal data: sealed at rest).
    pub display_name: Option<String>,
}

/// What presenting a refresh token did.
#[derive(Debug, PartialEq, Eq)]
pub enum Rotation {
    /// Exchanged: the new token is stored in the same family.
    Rotated {
        /// Whose family.
        user_id: String,
        /// Which family.
        family_id: String,
    },
    /// The token had been exchanged before: its whole family is now revoked.
    Reused {
        /// Whose family.
        user_id: String,
        /// Which family.
        family_id: String,
        /// Tokens this revoked.
        revoked: u64,
    },
    /// Unknown, expired, or of a revoked or ended family: nothing changed.
    Refused,
}

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database refused or could not be reached.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Opening or migrating the database failed.
    #[error("{0}")]
    Db(#[from] DbError),
    /// A username that is already taken.
    #[error("user `{0}` already exists")]
    Duplicate(String),
    /// No such user.
    #[error("no user `{0}`")]
    NoSuchUser(String),
    /// A stored value that does not decode.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Sealing or opening failed.
    #[error("{0}")]
    Seal(#[from] SealError),
}

/// The store: a connection pool to SQLite or PostgreSQL.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    keys: Arc<MasterKeys>,
}

const USER_COLUMNS: &str = "id, username, roles, disabled, master_kid, data_key, password_hash, email, display_name";

impl Store {
    /// Connects (creating an SQLite file if needed) and applies the migrations; `keys`
    /// seal and open personal data. Refuses a database where two usernames differ only by
    /// case, naming them.
    pub async fn open(url: &str, keys: Arc<MasterKeys>) -> Result<Self, StoreError> {
        let pool = db::connect(url, 8).await?;
        refuse_case_duplicates(&pool).await?;
        db::migrate(&pool, &MIGRATIONS).await?;
        Ok(Self { pool, keys })
    }

    /// Adds a user, sealing its secrets and personal data under a new data key.
    pub async fn add_user(&self, user: &User) -> Result<(), StoreError> {
        let roles = serde_json::to_string(&user.roles).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let sealed = self.seal(user)?;
        let query = sqlx::query(
            "INSERT INTO users (id, username, roles, disabled, created_at, master_kid, data_key, password_hash, \
             email, display_name, email_index) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&user.id)
        .bind(user.username.to_ascii_lowercase())
        .bind(roles)
        .bind(i64::from(user.disabled))
        .bind(now_i64());
        let result = sealed.bind(query).execute(&self.pool).await;
        match result {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::Duplicate(user.username.clone()))
            }
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    fn seal(&self, user: &User) -> Result<SealedUser, StoreError> {
        let (data_key, key) = self.keys.new_data_key()?;
        let field = |name: &str, value: Option<&String>| {
            value.map(|v| data_key.seal(v.as_bytes(), &format!("users/{}/{name}", user.id))).transpose()
        };
        Ok(SealedUser {
            password_hash: data_key.seal(user.password_hash.as_bytes(), &format!("users/{}/password_hash", user.id))?,
            email: field("email", user.email.as_ref())?,
            display_name: field("display_name", user.display_name.as_ref())?,
            email_index: user.email.as_deref().map(|e| self.keys.email_index(e)).transpose()?,
            key,
        })
    }

    /// A user by email (through the keyed index; every loaded master key is tried).
    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        for index in self.keys.email_indexes(email)? {
            let query = format!("SELECT {USER_COLUMNS} FROM users WHERE email_index = $1");
            if let Some(row) = sqlx::query(&query).bind(index).fetch_optional(&self.pool).await? {
                return self.user_from_row(&row).map(Some);
            }
        }
        Ok(None)
    }

    /// Re-seals every user under the active master key with a fresh data key; returns how
    /// many rows moved. Each row is rewritten in one statement: never half-written.
    pub async fn rekey(&self) -> Result<u64, StoreError> {
        let query = format!("SELECT {USER_COLUMNS} FROM users WHERE master_kid <> $1");
        let rows = sqlx::query(&query).bind(self.keys.active_kid()).fetch_all(&self.pool).await?;
        let mut moved = 0;
        for row in rows {
            let user = self.user_from_row(&row)?;
            let sealed = self.seal(&user)?;
            let query = sqlx::query(
                "UPDATE users SET master_kid = $1, data_key = $2, password_hash = $3, email = $4, display_name = $5, \
                 email_index = $6 WHERE id = $7",
            );
            sealed.bind(query).bind(&user.id).execute(&self.pool).await?;
            moved += 1;
        }
        Ok(moved)
    }

    /// A user by login name (any case).
    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>, StoreError> {
        self.one_user("username", &username.to_ascii_lowercase()).await
    }

    /// A user by id.
    pub async fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.one_user("id", id).await
    }

    async fn one_user(&self, column: &'static str, key: &str) -> Result<Option<User>, StoreError> {
        let query = format!("SELECT {USER_COLUMNS} FROM users WHERE {column} = $1");
        let row = sqlx::query(&query).bind(key).fetch_optional(&self.pool).await?;
        row.map(|r| self.user_from_row(&r)).transpose()
    }

    /// All users, by name.
    pub async fn users(&self) -> Result<Vec<User>, StoreError> {
        let query = format!("SELECT {USER_COLUMNS} FROM users ORDER BY username");
        let rows = sqlx::query(&query).fetch_all(&self.pool).await?;
        rows.iter().map(|r| self.user_from_row(r)).collect()
    }

    fn user_from_row(&self, r: &AnyRow) -> Result<User, StoreError> {
        let id: String = r.try_get("id")?;
        let roles: String = r.try_get("roles")?;
        let disabled: i64 = r.try_get("disabled")?;
        let sealed_key = SealedKey { master_kid: r.try_get("master_kid")?, wrapped: r.try_get("data_key")? };
        let data_key = self.keys.open_data_key(&sealed_key)?;
        let open = |name: &str| -> Result<Option<String>, StoreError> {
            let sealed: Option<Vec<u8>> = r.try_get(name)?;
            sealed
                .map(|s| {
                    let plain = data_key.open(&s, &format!("users/{id}/{name}"))?;
                    String::from_utf8(plain).map_err(|_| StoreError::Corrupt(format!("{name} is not UTF-8")))
                })
                .transpose()
        };
        Ok(User {
            username: r.try_get("username")?,
            password_hash: open("password_hash")?.ok_or_else(|| StoreError::Corrupt("no password hash".into()))?,
            roles: serde_json::from_str(&roles).map_err(|e| StoreError::Corrupt(format!("roles: {e}")))?,
            disabled: disabled != 0,
            email: open("email")?,
            display_name: open("display_name")?,
            id,
        })
    }

    /// Replaces a user's roles.
    pub async fn set_roles(&self, username: &str, roles: &[String]) -> Result<(), StoreError> {
        let roles = serde_json::to_string(roles).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let done = sqlx::query("UPDATE users SET roles = $1 WHERE username = $2")
            .bind(roles)
            .bind(username.to_ascii_lowercase())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NoSuchUser(username.into()));
        }
        Ok(())
    }

    /// Disables a user; their refresh tokens stop working at the next refresh.
    pub async fn disable(&self, username: &str) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE users SET disabled = 1 WHERE username = $1")
            .bind(username.to_ascii_lowercase())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NoSuchUser(username.into()));
        }
        Ok(())
    }

    /// Starts a family (one login) with its first token, both in one transaction. The
    /// family ends at `family_expires_at` however often it is refreshed.
    pub async fn start_family(
        &self,
        family_id: &str,
        user_id: &str,
        family_expires_at: i64,
        token_hash: &str,
        token_expires_at: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO refresh_families (family_id, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(family_id)
        .bind(user_id)
        .bind(now_i64())
        .bind(family_expires_at)
        .execute(&mut *tx)
        .await?;
        insert_token(&mut tx, token_hash, family_id, user_id, token_expires_at.min(family_expires_at)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Exchanges the token `token_hash` for `new_hash` (living `ttl` seconds, never past its
    /// family's end), detecting reuse: all in one transaction, see the module doc.
    pub async fn rotate(&self, token_hash: &str, new_hash: &str, ttl: i64) -> Result<Rotation, StoreError> {
        let now = now_i64();
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query("SELECT family_id, user_id, expires_at FROM refresh_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else { return Ok(Rotation::Refused) };
        let (family_id, user_id, expires_at): (String, String, i64) =
            (row.try_get("family_id")?, row.try_get("user_id")?, row.try_get("expires_at")?);
        // The family row first: it is the lock that orders everything done to this family.
        let live = sqlx::query(
            "UPDATE refresh_families SET rotations = rotations + 1 \
             WHERE family_id = $1 AND revoked_at IS NULL AND expires_at > $2",
        )
        .bind(&family_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if live.rows_affected() != 1 || expires_at <= now {
            tx.rollback().await?;
            return Ok(Rotation::Refused);
        }
        let exchanged =
            sqlx::query("UPDATE refresh_tokens SET rotated_at = $1 WHERE token_hash = $2 AND rotated_at IS NULL")
                .bind(now)
                .bind(token_hash)
                .execute(&mut *tx)
                .await?;
        if exchanged.rows_affected() != 1 {
            // Someone presents a token that was already exchanged: either it was stolen or
            // the legitimate client was; the family can no longer be trusted.
            let revoked = revoke_in(&mut tx, &family_id, now).await?;
            tx.commit().await?;
            return Ok(Rotation::Reused { user_id, family_id, revoked });
        }
        let family_end: i64 = sqlx::query("SELECT expires_at FROM refresh_families WHERE family_id = $1")
            .bind(&family_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("expires_at")?;
        insert_token(&mut tx, new_hash, &family_id, &user_id, now.saturating_add(ttl).min(family_end)).await?;
        tx.commit().await?;
        Ok(Rotation::Rotated { user_id, family_id })
    }

    /// Revokes the family of the token `token_hash`, if it is one of ours: its user and how
    /// many tokens that revoked.
    pub async fn revoke_family_of(&self, token_hash: &str) -> Result<Option<(String, u64)>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query("SELECT family_id, user_id FROM refresh_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let (family_id, user_id): (String, String) = (row.try_get("family_id")?, row.try_get("user_id")?);
        let revoked = revoke_in(&mut tx, &family_id, now_i64()).await?;
        tx.commit().await?;
        Ok(Some((user_id, revoked)))
    }

    /// Revokes a family by id (a disabled user's refresh).
    pub async fn revoke_family(&self, family_id: &str) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let revoked = revoke_in(&mut tx, family_id, now_i64()).await?;
        tx.commit().await?;
        Ok(revoked)
    }
}

type Tx = sqlx::Transaction<'static, sqlx::Any>;

async fn insert_token(
    tx: &mut Tx,
    token_hash: &str,
    family_id: &str,
    user_id: &str,
    expires_at: i64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO refresh_tokens (token_hash, family_id, user_id, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(token_hash)
        .bind(family_id)
        .bind(user_id)
        .bind(expires_at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Marks the family revoked (the family row first, then its tokens); how many tokens.
async fn revoke_in(tx: &mut Tx, family_id: &str, now: i64) -> Result<u64, StoreError> {
    sqlx::query("UPDATE refresh_families SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL")
        .bind(now)
        .bind(family_id)
        .execute(&mut **tx)
        .await?;
    let done = sqlx::query("UPDATE refresh_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL")
        .bind(now)
        .bind(family_id)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected())
}

/// Before usernames are folded to lower case: refuse, naming them, when two differ only by case.
async fn refuse_case_duplicates(pool: &AnyPool) -> Result<(), StoreError> {
    // On a new database there is no table yet, and so nothing to refuse.
    let Ok(rows) = sqlx::query(
        "SELECT LOWER(username) AS folded, COUNT(*) AS n FROM users GROUP BY LOWER(username) HAVING COUNT(*) > 1",
    )
    .fetch_all(pool)
    .await
    else {
        return Ok(());
    };
    let clashes: Vec<String> = rows.iter().filter_map(|r| r.try_get::<String, _>("folded").ok()).collect();
    if clashes.is_empty() {
        return Ok(());
    }
    Err(DbError::Refused(format!(
        "usernames that differ only by case: {} (rename or remove all but one, then start again)",
        clashes.join(", ")
    ))
    .into())
}

/// A user's sealed columns.
struct SealedUser {
    key: SealedKey,
    password_hash: Vec<u8>,
    email: Option<Vec<u8>>,
    display_name: Option<Vec<u8>>,
    email_index: Option<String>,
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

impl SealedUser {
    /// Binds, in this order: master_kid, data_key, password_hash, email, display_name, email_index.
    fn bind(self, query: AnyQuery<'_>) -> AnyQuery<'_> {
        query
            .bind(self.key.master_kid)
            .bind(self.key.wrapped)
            .bind(self.password_hash)
            .bind(self.email)
            .bind(self.display_name)
            .bind(self.email_index)
    }
}
