//! Kestra's execution as the gateway reads it, leniently (Kestra adds fields between
//! versions; only what the gateway uses is read), and how Kestra's states map onto a job's.

use serde::Deserialize;

use crate::pb::JobState;

/// The label that ties an execution to its job: the idempotency key Kestra carries. Kestra has
/// no idempotent create, so a retried create first looks for an execution with this label.
pub const JOB_LABEL: &str = "qiria-job";

/// An execution (`GET /api/v1/{tenant}/executions/{id}`, the create answer, search results).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Execution {
    /// Kestra's id (opaque).
    pub id: String,
    /// Its namespace.
    #[serde(default)]
    pub namespace: String,
    /// Its flow.
    #[serde(default)]
    pub flow_id: String,
    /// Flow labels, request labels, then Kestra's own.
    #[serde(default)]
    pub labels: Vec<Label>,
    /// Where it is.
    pub state: ExecutionState,
    /// The flow's outputs, once finished.
    #[serde(default)]
    pub outputs: Option<serde_json::Map<String, serde_json::Value>>,
}

/// One label.
#[derive(Debug, Clone, Deserialize)]
pub struct Label {
    /// Key.
    pub key: String,
    /// Value.
    #[serde(default)]
    pub value: String,
}

/// `state` of an execution.
#[derive(Debug, Clone, Deserialize)]
pub struct ExecutionState {
    /// `CREATED`, `RUNNING`, `SUCCESS`…
    pub current: String,
}

/// `GET /api/v1/{tenant}/executions/search`.
#[derive(Debug, Deserialize)]
pub struct SearchPage {
    /// The executions of this page.
    #[serde(default)]
    pub results: Vec<Execution>,
}

impl Execution {
    /// Whether this execution carries `key=value` (checked here: a Kestra that ignored the
    /// search filters would return every execution).
    pub fn has_label(&self, key: &str, value: &str) -> bool {
        self.labels.iter().any(|l| l.key == key && l.value == value)
    }

    /// The job state this execution puts its job in.
    pub fn job_state(&self) -> JobState {
        job_state(&self.state.current)
    }
}

/// Kestra's state onto a job's. Unknown states (newer Kestra versions add some) are taken as
/// not finished, so the job keeps being followed.
pub fn job_state(kestra: &str) -> JobState {
    match kestra {
        "CREATED" | "SUBMITTED" | "QUEUED" => JobState::Queued,
        "SUCCESS" | "WARNING" | "SKIPPED" | "RETRIED" | "RESUBMITTED" => JobState::Success,
        "FAILED" => JobState::Failed,
        "KILLED" | "CANCELLED" => JobState::Cancelled,
        _ => JobState::Running,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kestra_states_map_onto_job_states() {
        for (kestra, job) in [
            ("CREATED", JobState::Queued),
            ("QUEUED", JobState::Queued),
            ("RUNNING", JobState::Running),
            ("PAUSED", JobState::Running),
            ("KILLING", JobState::Running),
            ("BREAKPOINT", JobState::Running),
            ("SOMETHING_NEW", JobState::Running),
            ("SUCCESS", JobState::Success),
            ("WARNING", JobState::Success),
            ("FAILED", JobState::Failed),
            ("KILLED", JobState::Cancelled),
            ("CANCELLED", JobState::Cancelled),
        ] {
            assert_eq!(job_state(kestra), job, "{kestra}");
        }
    }

    #[test]
    fn reads_the_documented_execution_shape_and_ignores_the_rest() {
        let e: Execution = serde_json::from_str(
            r#"{"id":"1KWLxLeaXEXNDaXWP7YSKA","namespace":"company.team","flowId":"myflow","flowRevision":3,
                "labels":[{"key":"qiria-job","value":"42"},{"key":"system.correlationId","value":"1KWL"}],
                "state":{"current":"CREATED","histories":[{"state":"CREATED","date":"2025-01-31T09:00:00Z"}]},
                "url":"http://kestra.example/ui/main/executions/company.team/myflow/1KWL"}"#,
        )
        .unwrap();
        assert!(e.has_label(JOB_LABEL, "42"));
        assert!(!e.has_label(JOB_LABEL, "43"));
        assert_eq!(e.job_state(), JobState::Queued);
    }
}
