//! What a sandbox backend is: it takes one script and its limits, runs it somewhere nothing of
//! the host is reachable, and gives back what happened — then nothing of the run is left.
//! The backends: `runsc` (gVisor on this host) and `bubblewrap` (namespaces and seccomp on the
//! host's kernel, weaker), both in [`host`]; `kubernetes` (a gVisor Job per run in a sandbox
//! namespace; [`kubernetes`], its requests sent by [`api_server`]).

pub(crate) mod api_server;
pub(crate) mod host;
pub(crate) mod kubernetes;
pub(crate) mod oci;
pub(crate) mod seccomp;

use std::time::Duration;

use crate::config::RunLimits;

/// One run to make.
#[derive(Debug, Clone)]
pub(crate) struct RunSpec {
    /// The run's id: names its bundle, cgroup and container (not the caller's job id).
    pub(crate) id: String,
    /// The script, run as `/job/main.py`.
    pub(crate) script: String,
    /// What it may use.
    pub(crate) limits: RunLimits,
}

/// A limit the host saw fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum LimitHit {
    /// The wall clock ran out; the sandbox was killed.
    Timeout,
    /// The CPU time ran out; the sandbox was killed.
    CpuTime,
    /// The memory limit was reached; the kernel killed (part of) the sandbox.
    Oom,
    /// The process limit refused a fork or thread (gVisor's kernel dies of it: its own
    /// threads count).
    Pids,
    /// Standard output or error passed its cap; the sandbox was stopped there.
    OutputTruncated,
    /// `/out` held more than the artifact cap; no artifact is returned.
    ArtifactTooLarge,
}

impl LimitHit {
    /// Its name in the API.
    pub(crate) fn name(self) -> &'static str {
        match self {
            LimitHit::Timeout => "timeout",
            LimitHit::CpuTime => "cpu_time",
            LimitHit::Oom => "oom",
            LimitHit::Pids => "pids",
            LimitHit::OutputTruncated => "output_truncated",
            LimitHit::ArtifactTooLarge => "artifact_too_large",
        }
    }
}

/// A file the script left in `/out`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Artifact {
    /// Path under `/out`.
    pub(crate) name: String,
    pub(crate) content: Vec<u8>,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub(crate) struct RunReport {
    /// The exit status (128+N for signal N), or `None` if the sandbox gave none.
    pub(crate) exit_code: Option<i32>,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    pub(crate) artifacts: Vec<Artifact>,
    /// Sorted, each once.
    pub(crate) limits_hit: Vec<LimitHit>,
    pub(crate) setup: Duration,
    pub(crate) run: Duration,
    pub(crate) cleanup: Duration,
    pub(crate) cpu: Duration,
    pub(crate) memory_peak: u64,
    /// What the script asked the egress proxy for.
    pub(crate) egress: Vec<crate::egress::Attempt>,
}

/// Why a run could not be made (never the script's own failure: that is a [`RunReport`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum SandboxError {
    /// Making the bundle, mounts or cgroup failed.
    #[error("sandbox setup: {0}")]
    Setup(std::io::Error),
    /// The launcher (runsc, bwrap) could not be started.
    #[error("starting the sandbox: {0}")]
    Start(std::io::Error),
    /// Watching the run failed (its cgroup could not be read or killed).
    #[error("supervising the run: {0}")]
    Supervise(std::io::Error),
    /// The cluster did not make or report the run (`kubernetes` backend).
    #[error("{0}")]
    Cluster(#[from] kubernetes::KubernetesError),
    /// Nothing of the run was made, and a later call may succeed (the cluster's API was out
    /// of reach before the run's Job existed): the caller may try again.
    #[error("not started: {0}")]
    NotStarted(kubernetes::KubernetesError),
}

/// A place scripts run.
pub(crate) trait Backend: Send + Sync + 'static {
    /// Runs `spec` to its end (or until `cancel` fires or is dropped: the caller has gone) and
    /// removes everything it made.
    fn run(
        &self,
        spec: RunSpec,
        cancel: tokio::sync::oneshot::Receiver<()>,
    ) -> impl std::future::Future<Output = Result<RunReport, SandboxError>> + Send;
}
