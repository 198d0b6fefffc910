//! A connection pool to SQLite or PostgreSQL from one URL, with the service's migrations
//! applied: embedded SQLite by default (the file created on first run), PostgreSQL when a
//! `postgres://` URL is given; the same code and SQL through sqlx's `Any` driver.

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::AnyPool;

/// A database operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The database refused or could not be reached.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database holds data a migration cannot take as it is.
    #[error("migrations: {0}")]
    Refused(String),
}

/// Whether `url` names an SQLite database.
pub fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// Connects (creating an SQLite file if needed) with a bounded pool; migrations are not run.
pub async fn connect(url: &str, max_connections: u32) -> Result<AnyPool, DbError> {
    sqlx::any::install_default_drivers();
    let url = if is_sqlite(url) && !url.contains("mode=") {
        format!("{url}{}mode=rwc", if url.contains('?') { "&" } else { "?" })
    } else {
        url.to_string()
    };
    // SQLite serialises writers anyway; one connection avoids "database is locked" and makes
    // every transaction run alone.
    let max = if is_sqlite(&url) { 1 } else { max_connections.max(1) };
    Ok(AnyPoolOptions::new().max_connections(max).connect(&url).await?)
}

/// Applies `migrations` (each in its own transaction; sqlx records what ran).
pub async fn migrate(pool: &AnyPool, migrations: &Migrator) -> Result<(), DbError> {
    migrations.run(pool).await?;
    Ok(())
}
