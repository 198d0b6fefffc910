//! The issuer's store: users (argon2id password hashes, roles) and refresh-token families.
//! Embedded SQLite by default (file created and migrated on first run), PostgreSQL when a
//! `postgres://` URL is given: the same code and migrations through sqlx's `Any` driver.

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

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
}

/// The store: a connection pool to SQLite or PostgreSQL.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
}

impl Store {
    /// Connects (creating an SQLite file if needed) and applies the migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
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
        Ok(Self { pool })
    }

    /// Adds a user.
    pub async fn add_user(&self, user: &User) -> Result<(), StoreError> {
        let roles = serde_json::to_string(&user.roles).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let result = sqlx::query(
            "INSERT INTO users (id, username, password_hash, roles, disabled, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&user.id)
        .bind(&user.username)
        .bind(&user.password_hash)
        .bind(roles)
        .bind(i64::from(user.disabled))
        .bind(now())
        .execute(&self.pool)
        .await;
        match result {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::Duplicate(user.username.clone()))
            }
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    /// A user by login name.
    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>, StoreError> {
        self.one_user("SELECT id, username, password_hash, roles, disabled FROM users WHERE username = $1", username)
            .await
    }

    /// A user by id.
    pub async fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.one_user("SELECT id, username, password_hash, roles, disabled FROM users WHERE id = $1", id).await
    }

    async fn one_user(&self, query: &'static str, key: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(query).bind(key).fetch_optional(&self.pool).await?;
        row.map(|r| user_from_row(&r)).transpose()
    }

    /// All users, by name.
    pub async fn users(&self) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query("SELECT id, username, password_hash, roles, disabled FROM users ORDER BY username")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(user_from_row).collect()
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

fn user_from_row(r: &AnyRow) -> Result<User, StoreError> {
    let roles: String = r.try_get("roles")?;
    let disabled: i64 = r.try_get("disabled")?;
    Ok(User {
        id: r.try_get("id")?,
        username: r.try_get("username")?,
        password_hash: r.try_get("password_hash")?,
        roles: serde_json::from_str(&roles).map_err(|e| StoreError::Corrupt(format!("roles: {e}")))?,
        disabled: disabled != 0,
    })
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}
