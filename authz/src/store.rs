//! The issuer's store: users (argon2id password hashes, roles, personal data) and
//! refresh-token families. Embedded SQLite by default (file created and migrated on first
//! run), PostgreSQL when a `postgres://` URL is given: the same code and migrations through
//! sqlx's `Any` driver. Personal data and password hashes are sealed before they are written
//! (`sealing`): the database never holds them in the clear.

use std::sync::Arc;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::sealing::{MasterKeys, SealError, SealedKey};

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

/// A stored refresh token (looked up by its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken {
    /// The login chain it belongs to.
    pub family_id: String,
    /// Whose it is.
    pub user_id: String,
    /// Seconds since the epoch.
    pub expires_at: i64,
    /// When it was exchanged, if it was.
    pub rotated_at: Option<i64>,
    /// When its family was revoked, if it was.
    pub revoked_at: Option<i64>,
}

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or could not be reached.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
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
    /// seal and open personal data.
    pub async fn open(url: &str, keys: Arc<MasterKeys>) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let url = if url.starts_with("sqlite:") && !url.contains("mode=") {
            format!("{url}{}mode=rwc", if url.contains('?') { "&" } else { "?" })
        } else {
            url.to_string()
        };
        // SQLite serialises writers anyway; one connection avoids "database is locked".
        let max = if url.starts_with("sqlite:") { 1 } else { 8 };
        let pool = AnyPoolOptions::new().max_connections(max).connect(&url).await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
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
        .bind(&user.username)
        .bind(roles)
        .bind(i64::from(user.disabled))
        .bind(now());
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

    /// A user by login name.
    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>, StoreError> {
        self.one_user("username", username).await
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
            .bind(username)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NoSuchUser(username.into()));
        }
        Ok(())
    }

    /// Disables a user; their refresh tokens stop working at the next refresh.
    pub async fn disable(&self, username: &str) -> Result<(), StoreError> {
        let done =
            sqlx::query("UPDATE users SET disabled = 1 WHERE username = $1").bind(username).execute(&self.pool).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NoSuchUser(username.into()));
        }
        Ok(())
    }

    /// Stores a new refresh token (by hash).
    pub async fn insert_refresh(
        &self,
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
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A refresh token by hash.
    pub async fn refresh(&self, token_hash: &str) -> Result<Option<RefreshToken>, StoreError> {
        let row = sqlx::query(
            "SELECT family_id, user_id, expires_at, rotated_at, revoked_at FROM refresh_tokens WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(RefreshToken {
                family_id: r.try_get("family_id")?,
                user_id: r.try_get("user_id")?,
                expires_at: r.try_get("expires_at")?,
                rotated_at: r.try_get("rotated_at")?,
                revoked_at: r.try_get("revoked_at")?,
            })
        })
        .transpose()
    }

    /// Marks a token rotated, only if it was not already: true when this call did it, so
    /// two concurrent refreshes with the same token cannot both succeed.
    pub async fn mark_rotated(&self, token_hash: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE refresh_tokens SET rotated_at = $1 WHERE token_hash = $2 AND rotated_at IS NULL AND revoked_at IS NULL",
        )
        .bind(now())
        .bind(token_hash)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Revokes every token of a family.
    pub async fn revoke_family(&self, family_id: &str) -> Result<u64, StoreError> {
        let done = sqlx::query("UPDATE refresh_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL")
            .bind(now())
            .bind(family_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
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

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}
