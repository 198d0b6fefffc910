//! The job store: jobs and their state transitions, in SQLite by default or PostgreSQL
//! (`qiria_store::db`, the same pool and migrations runner as the issuer's). Every read and
//! write takes the caller's [`Scope`]: the owner check is part of the query.

use qiria_runtime::clock::now_i64;
use qiria_store::db;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use crate::access::Scope;
use crate::pb::{Job, JobKind, JobState};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

const COLUMNS: &str =
    "id, owner, kind, state, reason, namespace, flow_id, execution_id, idempotency_key, created_at, updated_at";

/// A job to record.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Who submits it.
    pub owner: String,
    /// Flow or script.
    pub kind: JobKind,
    /// Kestra namespace (flows).
    pub namespace: String,
    /// Kestra flow id (flows).
    pub flow_id: String,
    /// The owner's key for this submission (generated when they gave none).
    pub idempotency_key: String,
    /// Why it waits.
    pub reason: String,
    /// The request itself (inputs, labels, script), as JSON.
    pub payload: serde_json::Value,
}

/// The store.
#[derive(Clone, Debug)]
pub struct JobStore {
    pool: AnyPool,
}

impl JobStore {
    /// Connects and migrates.
    pub async fn open(url: &str) -> Result<Self, db::DbError> {
        let pool = db::connect(url, 8).await?;
        db::migrate(&pool, &MIGRATIONS).await?;
        Ok(Self { pool })
    }

    /// Records `new` as a queued job, or returns the job its owner already submitted under
    /// the same idempotency key (`false`: nothing new was recorded).
    pub async fn create(&self, new: &NewJob) -> Result<(Job, bool), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let existing = sqlx::query(&format!("SELECT {COLUMNS} FROM jobs WHERE owner = $1 AND idempotency_key = $2"))
            .bind(&new.owner)
            .bind(&new.idempotency_key)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = existing {
            return Ok((job(&row)?, false));
        }
        let (id, now) = (uuid::Uuid::new_v4().to_string(), now_i64());
        let state = state_name(JobState::Queued);
        let inserted = sqlx::query(
            "INSERT INTO jobs (id, owner, kind, state, reason, namespace, flow_id, execution_id, idempotency_key, \
             payload, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, '', $8, $9, $10, $10)",
        )
        .bind(&id)
        .bind(&new.owner)
        .bind(kind_name(new.kind))
        .bind(state)
        .bind(&new.reason)
        .bind(&new.namespace)
        .bind(&new.flow_id)
        .bind(&new.idempotency_key)
        .bind(new.payload.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            // The same key from a concurrent call that committed first: that one is the job.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                drop(tx);
                let row = sqlx::query(&format!("SELECT {COLUMNS} FROM jobs WHERE owner = $1 AND idempotency_key = $2"))
                    .bind(&new.owner)
                    .bind(&new.idempotency_key)
                    .fetch_one(&self.pool)
                    .await?;
                return Ok((job(&row)?, false));
            }
            Err(e) => return Err(e),
        }
        transition(&mut tx, &id, state, &new.reason, now).await?;
        tx.commit().await?;
        let job = self.get(&id, &Scope::All).await?.ok_or(sqlx::Error::RowNotFound)?;
        Ok((job, true))
    }

    /// The job `id`, if it is in `scope`.
    pub async fn get(&self, id: &str, scope: &Scope) -> Result<Option<Job>, sqlx::Error> {
        let row = match scope {
            Scope::All => {
                sqlx::query(&format!("SELECT {COLUMNS} FROM jobs WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?
            }
            Scope::Owner(owner) => {
                sqlx::query(&format!("SELECT {COLUMNS} FROM jobs WHERE id = $1 AND owner = $2"))
                    .bind(id)
                    .bind(owner)
                    .fetch_optional(&self.pool)
                    .await?
            }
        };
        row.as_ref().map(job).transpose()
    }

    /// Up to `limit` jobs in `scope`, newest first, older than `before` (created_at, id).
    pub async fn list(
        &self,
        scope: &Scope,
        limit: u32,
        before: Option<(i64, String)>,
    ) -> Result<Vec<Job>, sqlx::Error> {
        let (at, id) = before.unwrap_or((i64::MAX, String::new()));
        // (created_at, id) < (at, id), spelt out: row-value comparison is not portable.
        let older = "(created_at < $1 OR (created_at = $1 AND ($2 = '' OR id < $2)))";
        let order = "ORDER BY created_at DESC, id DESC LIMIT $3";
        let rows = match scope {
            Scope::All => {
                sqlx::query(&format!("SELECT {COLUMNS} FROM jobs WHERE {older} {order}"))
                    .bind(at)
                    .bind(id)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
            Scope::Owner(owner) => {
                sqlx::query(&format!("SELECT {COLUMNS} FROM jobs WHERE {older} AND owner = $4 {order}"))
                    .bind(at)
                    .bind(id)
                    .bind(i64::from(limit))
                    .bind(owner)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(job).collect()
    }

    /// Moves the job `id` (in `scope`) from a state in `from` to `to`; the job after the
    /// change, or `None` when there is no such job in scope or it is in no state of `from`.
    pub async fn transition(
        &self,
        id: &str,
        scope: &Scope,
        from: &[JobState],
        to: JobState,
        reason: &str,
    ) -> Result<Option<Job>, sqlx::Error> {
        let Some(current) = self.get(id, scope).await? else { return Ok(None) };
        if !from.contains(&current.state()) {
            return Ok(None);
        }
        let (now, mut tx) = (now_i64(), self.pool.begin().await?);
        // The state read above is the condition of the update: a concurrent change wins once.
        let done = sqlx::query("UPDATE jobs SET state = $1, reason = $2, updated_at = $3 WHERE id = $4 AND state = $5")
            .bind(state_name(to))
            .bind(reason)
            .bind(now)
            .bind(id)
            .bind(state_name(current.state()))
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        transition(&mut tx, id, state_name(to), reason, now).await?;
        tx.commit().await?;
        self.get(id, scope).await
    }
}

async fn transition(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    id: &str,
    state: &str,
    reason: &str,
    at: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO job_transitions (job_id, state, reason, at) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(state)
        .bind(reason)
        .bind(at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Whether a job in `state` will change no more.
pub fn is_terminal(state: JobState) -> bool {
    matches!(state, JobState::Success | JobState::Failed | JobState::Cancelled)
}

fn state_name(state: JobState) -> &'static str {
    match state {
        JobState::Unspecified | JobState::Queued => "QUEUED",
        JobState::Running => "RUNNING",
        JobState::Success => "SUCCESS",
        JobState::Failed => "FAILED",
        JobState::Cancelled => "CANCELLED",
    }
}

fn kind_name(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Unspecified | JobKind::Flow => "FLOW",
        JobKind::Script => "SCRIPT",
    }
}

fn job(row: &AnyRow) -> Result<Job, sqlx::Error> {
    let state = match row.try_get::<String, _>("state")?.as_str() {
        "QUEUED" => JobState::Queued,
        "RUNNING" => JobState::Running,
        "SUCCESS" => JobState::Success,
        "FAILED" => JobState::Failed,
        "CANCELLED" => JobState::Cancelled,
        _ => JobState::Unspecified,
    };
    let kind = if row.try_get::<String, _>("kind")? == "SCRIPT" { JobKind::Script } else { JobKind::Flow };
    Ok(Job {
        id: row.try_get("id")?,
        owner: row.try_get("owner")?,
        kind: kind as i32,
        state: state as i32,
        reason: row.try_get("reason")?,
        namespace: row.try_get("namespace")?,
        flow_id: row.try_get("flow_id")?,
        execution_id: row.try_get("execution_id")?,
        idempotency_key: row.try_get("idempotency_key")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}
