//! The job store: jobs and their state transitions, in SQLite by default or PostgreSQL
//! (`qiria_store::db`, the same pool and migrations runner as the issuer's). Every read and
//! write takes the caller's [`Scope`]: the owner check is part of the query.

use std::collections::BTreeMap;

use qiria_runtime::clock::now_i64;
use qiria_store::db;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use crate::access::Scope;
use crate::pb::{Job, JobKind, JobState};
use crate::sandbox_pb::RunResult;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

const COLUMNS: &str = "id, owner, kind, state, reason, namespace, flow_id, execution_id, idempotency_key, \
     created_at, updated_at, kestra_state, outputs, payload, attempts, last_attempt_ms, attempt_pending, \
     cancel_requested_by, script_result";

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

    /// Cancels the job `id` (in `scope`) if nothing of it has left the gateway: a queued script,
    /// or a queued flow no create was sent for. `None` otherwise.
    pub async fn cancel_unsent(&self, id: &str, scope: &Scope, reason: &str) -> Result<Option<Job>, sqlx::Error> {
        let (now, mut tx) = (now_i64(), self.pool.begin().await?);
        let (owner_clause, owner) = owner_clause(scope, 4);
        let sql = format!(
            "UPDATE jobs SET state = 'CANCELLED', reason = $1, updated_at = $2 WHERE id = $3 {owner_clause} \
             AND state = 'QUEUED' AND (kind = 'SCRIPT' OR attempts = 0)"
        );
        let mut query = sqlx::query(&sql).bind(reason).bind(now).bind(id);
        if let Some(owner) = owner {
            query = query.bind(owner);
        }
        if query.execute(&mut *tx).await?.rows_affected() != 1 {
            return Ok(None);
        }
        transition(&mut tx, id, "CANCELLED", reason, now).await?;
        tx.commit().await?;
        self.get(id, scope).await
    }

    /// Records that `by` asked to cancel the live job `id` (in `scope`) whose work is in
    /// Kestra or on its way there: the driver kills the execution. `None` when there is no
    /// such live job in scope.
    pub async fn request_cancel(&self, id: &str, scope: &Scope, by: &str) -> Result<Option<Job>, sqlx::Error> {
        let (owner_clause, owner) = owner_clause(scope, 5);
        let sql = format!(
            "UPDATE jobs SET cancel_requested_by = CASE WHEN cancel_requested_by = '' THEN $1 \
             ELSE cancel_requested_by END, reason = $2, updated_at = $3 WHERE id = $4 {owner_clause} \
             AND state IN ('QUEUED', 'RUNNING')"
        );
        let reason = format!("cancel requested by {by}");
        let mut query = sqlx::query(&sql).bind(by).bind(&reason).bind(now_i64()).bind(id);
        if let Some(owner) = owner {
            query = query.bind(owner);
        }
        if query.execute(&self.pool).await?.rows_affected() != 1 {
            return Ok(None);
        }
        self.get(id, scope).await
    }

    /// How many jobs `owner` has that are not finished (queued or running).
    pub async fn live_count(&self, owner: &str) -> Result<i64, sqlx::Error> {
        sqlx::query("SELECT COUNT(*) AS n FROM jobs WHERE owner = $1 AND state IN ('QUEUED', 'RUNNING')")
            .bind(owner)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")
    }

    /// The ids of `owner`'s jobs that are not finished.
    pub async fn live_ids_of(&self, owner: &str) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query("SELECT id FROM jobs WHERE owner = $1 AND state IN ('QUEUED', 'RUNNING')")
            .bind(owner)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| row.try_get("id"))
            .collect()
    }

    /// Deletes up to `limit` finished jobs last changed before `before` (seconds since the
    /// epoch), with their transitions and results: retention. The number deleted.
    pub async fn purge_finished(&self, before: i64, limit: u32) -> Result<u64, sqlx::Error> {
        let chosen = "SELECT id FROM jobs WHERE state IN ('SUCCESS', 'FAILED', 'CANCELLED') AND updated_at < $1 \
                      ORDER BY updated_at LIMIT $2";
        self.delete(chosen, before, i64::from(limit)).await
    }

    /// Deletes every finished job of `owner` (erasure of their personal data: inputs, results,
    /// labels). Live jobs are left to end first; the number deleted.
    pub async fn erase_finished_of(&self, owner: &str) -> Result<u64, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let finished = "owner = $1 AND state IN ('SUCCESS', 'FAILED', 'CANCELLED')";
        sqlx::query(&format!("DELETE FROM job_transitions WHERE job_id IN (SELECT id FROM jobs WHERE {finished})"))
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query(&format!("DELETE FROM jobs WHERE {finished}")).bind(owner).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// Deletes the jobs `chosen` (a query of ids over `$1`, `$2`) and their transitions, in one
    /// transaction: a job is never left without its history or the other way round.
    async fn delete(&self, chosen: &str, first: i64, second: i64) -> Result<u64, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<String> = sqlx::query(chosen)
            .bind(first)
            .bind(second)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| row.try_get("id"))
            .collect::<Result<_, _>>()?;
        for id in &ids {
            sqlx::query("DELETE FROM job_transitions WHERE job_id = $1").bind(id).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM jobs WHERE id = $1").bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(ids.len() as u64)
    }

    /// Up to `limit` live flow jobs, least recently updated first: the driver's work list.
    /// The store is the queue, so a restarted gateway resumes exactly where it stopped.
    pub async fn live_flows(&self, limit: u32) -> Result<Vec<FlowWork>, sqlx::Error> {
        self.live("FLOW", limit).await?.iter().map(flow_work).collect()
    }

    /// Up to `limit` unfinished jobs of `kind`, least recently updated first.
    async fn live(&self, kind: &str, limit: u32) -> Result<Vec<AnyRow>, sqlx::Error> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM jobs WHERE kind = $1 AND state IN ('QUEUED', 'RUNNING') \
             ORDER BY updated_at, id LIMIT $2"
        ))
        .bind(kind)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
    }

    /// Takes the next create attempt of flow job `id`, recorded before the create is sent:
    /// `false` when another attempt, an execution, or a cancel got there first.
    pub async fn claim_attempt(&self, id: &str, attempts_seen: i64) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE jobs SET attempts = attempts + 1, last_attempt_ms = $1, attempt_pending = 1 WHERE id = $2 \
             AND attempts = $3 \
             AND execution_id = '' AND state = 'QUEUED' AND cancel_requested_by = ''",
        )
        .bind(now_ms())
        .bind(id)
        .bind(attempts_seen)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Applies what was learnt of flow job `work` (from the state `work` was read in); the job
    /// after the change, or `None` when nothing changed or the job moved on meanwhile.
    pub async fn observe(&self, work: &Job, seen: &Observation) -> Result<Option<Job>, sqlx::Error> {
        let execution_id = seen.execution_id.as_deref().unwrap_or(&work.execution_id);
        let outputs = seen.outputs.as_ref().map(|o| serde_json::Value::Object(o.clone()).to_string());
        let unchanged = seen.state == work.state()
            && seen.reason == work.reason
            && seen.kestra_state == work.kestra_state
            && execution_id == work.execution_id
            && outputs.is_none()
            && !seen.not_sent;
        if unchanged {
            return Ok(None);
        }
        let (now, mut tx) = (now_i64(), self.pool.begin().await?);
        // The state and execution read are the condition: a concurrent change wins once.
        let done = sqlx::query(
            "UPDATE jobs SET state = $1, reason = $2, kestra_state = $3, execution_id = $4, \
             outputs = CASE WHEN $5 = '' THEN outputs ELSE $5 END, updated_at = $6, \
             attempt_pending = CASE WHEN $10 = 1 THEN 0 ELSE attempt_pending END \
             WHERE id = $7 AND state = $8 AND execution_id = $9",
        )
        .bind(state_name(seen.state))
        .bind(&seen.reason)
        .bind(&seen.kestra_state)
        .bind(execution_id)
        .bind(outputs.unwrap_or_default())
        .bind(now)
        .bind(&work.id)
        .bind(state_name(work.state()))
        .bind(&work.execution_id)
        .bind(i64::from(seen.not_sent))
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        if seen.state != work.state() {
            transition(&mut tx, &work.id, state_name(seen.state), &seen.reason, now).await?;
        }
        tx.commit().await?;
        self.get(&work.id, &Scope::All).await
    }
}

/// A live script job as the script driver sees it.
#[derive(Debug, Clone)]
pub struct ScriptWork {
    /// The job.
    pub job: Job,
    /// `python`.
    pub language: String,
    /// The script.
    pub body: String,
    /// The trace its submission belongs to (W3C `traceparent`; empty: none).
    pub traceparent: String,
    /// Times it was handed to the worker.
    pub attempts: i64,
    /// When it last was (ms since the epoch).
    pub last_attempt_ms: i64,
    /// Who asked to cancel it, if anyone.
    pub cancel_requested_by: String,
}

impl JobStore {
    /// Up to `limit` live script jobs, least recently updated first: the script driver's work.
    pub async fn live_scripts(&self, limit: u32) -> Result<Vec<ScriptWork>, sqlx::Error> {
        self.live("SCRIPT", limit).await?.iter().map(script_work).collect()
    }

    /// Takes queued script `id` for a run (`QUEUED` → `RUNNING`, the attempt counted): `None`
    /// when it was cancelled or taken first.
    pub async fn claim_script(&self, id: &str, reason: &str) -> Result<Option<Job>, sqlx::Error> {
        let (now, mut tx) = (now_i64(), self.pool.begin().await?);
        let done = sqlx::query(
            "UPDATE jobs SET state = 'RUNNING', reason = $1, attempts = attempts + 1, last_attempt_ms = $2, \
             updated_at = $3 WHERE id = $4 AND kind = 'SCRIPT' AND state = 'QUEUED' AND cancel_requested_by = ''",
        )
        .bind(reason)
        .bind(now_ms())
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        transition(&mut tx, id, "RUNNING", reason, now).await?;
        tx.commit().await?;
        self.get(id, &Scope::All).await
    }

    /// Ends running script `id` in `state` (or puts it back in the queue with `QUEUED`),
    /// with its result when it has one; `None` when it was not running.
    pub async fn settle_script(
        &self,
        id: &str,
        state: JobState,
        reason: &str,
        result: Option<&RunResult>,
    ) -> Result<Option<Job>, sqlx::Error> {
        use base64::Engine as _;
        let encoded =
            result.map(|r| base64::engine::general_purpose::STANDARD.encode(prost::Message::encode_to_vec(r)));
        let (now, mut tx) = (now_i64(), self.pool.begin().await?);
        let done = sqlx::query(
            "UPDATE jobs SET state = $1, reason = $2, script_result = $3, updated_at = $4 \
             WHERE id = $5 AND kind = 'SCRIPT' AND state = 'RUNNING'",
        )
        .bind(state_name(state))
        .bind(reason)
        .bind(encoded.unwrap_or_default())
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        transition(&mut tx, id, state_name(state), reason, now).await?;
        tx.commit().await?;
        self.get(id, &Scope::All).await
    }

    /// Who asked to cancel job `id` (empty: nobody).
    pub async fn cancel_requested_by(&self, id: &str) -> Result<String, sqlx::Error> {
        let row = sqlx::query("SELECT cancel_requested_by FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("cancel_requested_by")).transpose()?.unwrap_or_default())
    }
}

/// The request a job was recorded with, read as `T`.
fn payload<T: serde::de::DeserializeOwned>(row: &AnyRow) -> Result<T, sqlx::Error> {
    let text: String = row.try_get("payload")?;
    serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn script_work(row: &AnyRow) -> Result<ScriptWork, sqlx::Error> {
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Payload {
        language: String,
        body: String,
        traceparent: String,
    }
    let payload: Payload = payload(row)?;
    Ok(ScriptWork {
        job: job(row)?,
        language: payload.language,
        body: payload.body,
        traceparent: payload.traceparent,
        attempts: row.try_get("attempts")?,
        last_attempt_ms: row.try_get("last_attempt_ms")?,
        cancel_requested_by: row.try_get("cancel_requested_by")?,
    })
}

/// A live flow job as the driver sees it.
#[derive(Debug, Clone)]
pub struct FlowWork {
    /// The job.
    pub job: Job,
    /// Its inputs.
    pub inputs: BTreeMap<String, String>,
    /// Its caller-given labels.
    pub labels: BTreeMap<String, String>,
    /// The trace its submission belongs to (W3C `traceparent`; empty: none).
    pub traceparent: String,
    /// Create attempts sent so far.
    pub attempts: i64,
    /// When the last was sent (ms since the epoch).
    pub last_attempt_ms: i64,
    /// Whether the last attempt may have reached Kestra (then it is reconciled, not resent).
    pub attempt_pending: bool,
    /// Who asked to cancel it, if anyone.
    pub cancel_requested_by: String,
}

/// What the driver learnt of a flow job.
#[derive(Debug, Clone)]
pub struct Observation {
    /// The job's state now.
    pub state: JobState,
    /// Why.
    pub reason: String,
    /// Kestra's state.
    pub kestra_state: String,
    /// The execution, when just learnt.
    pub execution_id: Option<String>,
    /// The flow's outputs, once finished.
    pub outputs: Option<serde_json::Map<String, serde_json::Value>>,
    /// The last create attempt is known not to have reached Kestra.
    pub not_sent: bool,
}

/// `AND owner = $n` for an owner scope.
fn owner_clause(scope: &Scope, n: u32) -> (String, Option<&str>) {
    match scope {
        Scope::All => (String::new(), None),
        Scope::Owner(owner) => (format!("AND owner = ${n}"), Some(owner)),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// How long ago `at_ms` (ms since the epoch) was.
pub(crate) fn since_ms(at_ms: i64) -> std::time::Duration {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    now.saturating_sub(std::time::Duration::from_millis(u64::try_from(at_ms).unwrap_or(0)))
}

fn flow_work(row: &AnyRow) -> Result<FlowWork, sqlx::Error> {
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Payload {
        inputs: BTreeMap<String, String>,
        labels: BTreeMap<String, String>,
        traceparent: String,
    }
    let payload: Payload = payload(row)?;
    Ok(FlowWork {
        job: job(row)?,
        inputs: payload.inputs,
        labels: payload.labels,
        traceparent: payload.traceparent,
        attempts: row.try_get("attempts")?,
        last_attempt_ms: row.try_get("last_attempt_ms")?,
        attempt_pending: row.try_get::<i64, _>("attempt_pending")? != 0,
        cancel_requested_by: row.try_get("cancel_requested_by")?,
    })
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

/// A state's name in the store and the audit trail.
pub fn state_name(state: JobState) -> &'static str {
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
        kestra_state: row.try_get("kestra_state")?,
        outputs: outputs(&row.try_get::<String, _>("outputs")?),
        script_result: script_result(&row.try_get::<String, _>("script_result")?),
    })
}

/// The stored result (protobuf, base64) of a script job.
fn script_result(text: &str) -> Option<RunResult> {
    use base64::Engine as _;
    if text.is_empty() {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).ok()?;
    prost::Message::decode(bytes.as_slice()).ok()
}

/// The stored outputs (JSON text) as a protobuf `Struct`.
fn outputs(text: &str) -> Option<prost_types::Struct> {
    match serde_json::from_str(text).ok()? {
        serde_json::Value::Object(map) => Some(structure(map)),
        _ => None,
    }
}

fn structure(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct { fields: map.into_iter().map(|(k, v)| (k, value(v))).collect() }
}

fn value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => {
            Kind::ListValue(prost_types::ListValue { values: items.into_iter().map(value).collect() })
        }
        serde_json::Value::Object(map) => Kind::StructValue(structure(map)),
    };
    prost_types::Value { kind: Some(kind) }
}
