//! The backends on this host: one fresh sandbox per run, isolated by gVisor (`runsc`, the
//! default) or by bubblewrap (namespaces and a seccomp filter on the host's own kernel: the
//! weaker one, for hosts without gVisor).
//!
//! A run is a bundle directory (`state_dir/runs/<id>`: runsc's `config.json` or bubblewrap's
//! seccomp program, the script read-only at `/job`, and a size-capped tmpfs the host mounts
//! for `/out`), a cgroup of its own that the launcher joins before it executes (so everything
//! of the sandbox — gVisor's kernel and gofer, or bubblewrap — and every process of the script
//! is in it, bound by its memory, pids and CPU limits and counted by it), and runsc's state
//! under `state_dir/runsc`. The host supervises wall clock, CPU time and output, kills the
//! whole cgroup when one runs out, then collects `/out` without following links and removes
//! all of it. What a killed worker left is found by the same names at start-up.
//!
//! Privileges: root on the host (cgroup v1 directories, the `/out` tmpfs mount, runsc without
//! `--rootless`). The script itself runs as uid 65534 with no capabilities: inside gVisor, or
//! (bubblewrap) as the host's uid 65534 in a user namespace of its own, launched already
//! unprivileged.
#![allow(unsafe_code, reason = "libc: the fork-exec launcher (rlimits, ids, prctl), mounting /out, geteuid")]

use std::collections::BTreeSet;
use std::ffi::CString;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::{oneshot, Notify};

use super::{oci, Artifact, Backend, LimitHit, RunReport, RunSpec, SandboxError};
use crate::cgroup::{Hierarchies, RunCgroup};
use crate::config::{RunLimits, SandboxConfig};
use crate::egress::{EgressPolicy, RunProxy};
use crate::rootfs::{self, RootFs};

/// How often the CPU time of a running sandbox is read.
const CPU_POLL: Duration = Duration::from_millis(50);
/// `/out` is this much larger than the artifact cap, so that passing the cap shows.
const OUT_SLACK: u64 = 64 << 10;

/// What isolates a run.
pub(crate) enum Isolation {
    /// gVisor's `runsc`.
    Gvisor { runsc: PathBuf },
    /// `bwrap`, with the seccomp program it installs (BPF bytes).
    Bubblewrap { bwrap: PathBuf, seccomp: Vec<u8> },
}

/// A backend on this host.
pub(crate) struct HostSandbox {
    isolation: Isolation,
    runs: PathBuf,
    state: PathBuf,
    rootfs: RootFs,
    cgroups: Hierarchies,
    egress: Option<EgressPolicy>,
}

/// What start-up found and removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Swept {
    pub(crate) containers: usize,
    pub(crate) cgroups: usize,
    pub(crate) bundles: usize,
}

impl HostSandbox {
    /// Checks the host, builds the root filesystem and removes what an earlier worker left.
    /// Blocking (the root filesystem build copies the stdlib): call it off the async threads.
    pub(crate) fn open(config: &SandboxConfig, egress: Option<EgressPolicy>) -> io::Result<(Self, Swept)> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("the {} backend needs root: it makes cgroups (memory, pids, cpu limits), mounts each run's /out and (runsc) runs runsc without --rootless", config.backend),
            ));
        }
        let isolation = match config.backend.as_str() {
            "bubblewrap" => {
                let seccomp = crate::sandbox::seccomp::program().map_err(io::Error::other)?;
                Isolation::Bubblewrap { bwrap: installed(&config.bwrap, "bubblewrap")?, seccomp }
            }
            _ => Isolation::Gvisor { runsc: installed(&config.runsc, "runsc")? },
        };
        std::fs::create_dir_all(&config.state_dir)?;
        let rootfs = rootfs::build(&config.state_dir, &config.python, &config.packages)?;
        let cgroups = Hierarchies::open(Path::new("/sys/fs/cgroup"), &config.cgroup_parent)?;
        let backend = Self {
            isolation,
            runs: config.state_dir.join("runs"),
            state: config.state_dir.join("runsc"),
            rootfs,
            cgroups,
            egress,
        };
        let swept = backend.sweep()?;
        std::fs::create_dir_all(&backend.runs)?;
        std::fs::create_dir_all(&backend.state)?;
        Ok((backend, swept))
    }

    /// Removes every container, cgroup, mount and bundle of ours there is (none is live: the
    /// worker that owned them is gone).
    fn sweep(&self) -> io::Result<Swept> {
        let mut swept = Swept::default();
        if let (Isolation::Gvisor { runsc }, true) = (&self.isolation, self.state.is_dir()) {
            let listed = std::process::Command::new(runsc)
                .args([Path::new("--root"), &self.state, Path::new("list"), Path::new("-quiet")])
                .env_clear()
                .output()?;
            for id in String::from_utf8_lossy(&listed.stdout).lines().map(str::trim).filter(|l| !l.is_empty()) {
                self.delete_container(id);
                swept.containers += 1;
            }
        }
        swept.cgroups = self.cgroups.sweep()?;
        if self.runs.is_dir() {
            for entry in std::fs::read_dir(&self.runs)? {
                let bundle = entry?.path();
                unmount(&bundle.join("out"));
                std::fs::remove_dir_all(&bundle)?;
                swept.bundles += 1;
            }
        }
        // runsc's lock and state files of containers it no longer lists.
        if self.state.is_dir() {
            std::fs::remove_dir_all(&self.state)?;
        }
        Ok(swept)
    }

    fn delete_container(&self, id: &str) {
        let Isolation::Gvisor { runsc } = &self.isolation else { return };
        let deleted = std::process::Command::new(runsc)
            .args([Path::new("--root"), &self.state, Path::new("delete"), Path::new("--force"), Path::new(id)])
            .env_clear()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !deleted.is_ok_and(|s| s.success()) {
            tracing::warn!(container = id, "runsc delete --force failed");
        }
    }

    /// Bundle, `/out` mount, cgroup: everything the run needs before runsc starts.
    fn prepare(&self, spec: &RunSpec, bundle: &Path) -> io::Result<RunCgroup> {
        let job = bundle.join("job");
        let out = bundle.join("out");
        std::fs::create_dir_all(&job)?;
        std::fs::create_dir(&out)?;
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o444).open(job.join("main.py")).and_then(
            |mut file| {
                use std::io::Write;
                file.write_all(spec.script.as_bytes())
            },
        )?;
        mount_out(&out, &spec.limits)?;
        let egress = bundle.join("egress");
        if self.egress.is_some() {
            std::fs::create_dir(&egress)?;
        }
        let egress = self.egress.is_some().then_some(egress.as_path());
        match &self.isolation {
            Isolation::Gvisor { .. } => {
                let config = oci::spec(&self.rootfs.dir, &self.rootfs.python, &job, &out, egress, &spec.limits);
                std::fs::write(bundle.join("config.json"), serde_json::to_vec(&config).map_err(io::Error::other)?)?;
            }
            Isolation::Bubblewrap { seccomp, .. } => std::fs::write(bundle.join("seccomp.bpf"), seccomp)?,
        }
        self.cgroups.create(&spec.id, &spec.limits)
    }

    /// Removes what the run made, in the order that frees each: processes, runsc's state,
    /// the cgroup, the mount, the bundle.
    fn clean(&self, id: &str, bundle: &Path, cgroup: Option<&RunCgroup>) -> io::Result<()> {
        if let Some(cgroup) = cgroup {
            cgroup.kill_all()?;
        }
        let of_this_run = || -> io::Result<Vec<PathBuf>> {
            Ok(std::fs::read_dir(&self.state)?
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().contains(id))
                .map(|e| e.path())
                .collect())
        };
        if !of_this_run()?.is_empty() {
            self.delete_container(id);
            // A killed `runsc run` leaves its lock file even after `delete --force`.
            for leftover in of_this_run()? {
                std::fs::remove_file(leftover)?;
            }
        }
        if let Some(cgroup) = cgroup {
            cgroup.remove()?;
        }
        unmount(&bundle.join("out"));
        match std::fs::remove_dir_all(bundle) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    async fn supervise(
        &self,
        spec: &RunSpec,
        bundle: &Path,
        cgroup: &RunCgroup,
        mut cancel: oneshot::Receiver<()>,
    ) -> Result<RunReport, SandboxError> {
        let limits = &spec.limits;
        let procs = cgroup.procs_files().map_err(SandboxError::Setup)?;
        let proxy = match &self.egress {
            Some(policy) => {
                Some(RunProxy::start(&bundle.join("egress/proxy.sock"), policy.clone()).map_err(SandboxError::Setup)?)
            }
            None => None,
        };
        let (mut command, seccomp) = self.command(spec, bundle, proxy.is_some()).map_err(SandboxError::Setup)?;
        command
            // Nothing of the worker's environment reaches the launcher (or, through it, the
            // sandbox).
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let launch = Launch {
            procs,
            seccomp_fd: seccomp.as_ref().map(std::os::fd::AsRawFd::as_raw_fd),
            unprivileged: matches!(self.isolation, Isolation::Bubblewrap { .. }),
            open_files: limits.open_files,
            file_size: limits.file_size_bytes,
        };
        // SAFETY: the closure only makes system calls (open/write/close, prctl, setrlimit, dup2,
        // setgroups/setgid/setuid), which is what may run between fork and exec.
        unsafe {
            command.pre_exec(move || launch.in_child());
        }
        let started = Instant::now();
        let mut child = command.spawn().map_err(SandboxError::Start)?;
        // The child has its copy of the seccomp program's descriptor.
        drop(seccomp);
        let overflow = Arc::new(Notify::new());
        let stdout = child.stdout.take().map(|s| tokio::spawn(capture(s, limits.output_bytes, overflow.clone())));
        let stderr = child.stderr.take().map(|s| tokio::spawn(capture(s, limits.output_bytes, overflow.clone())));

        let mut hits = BTreeSet::new();
        let wall = tokio::time::sleep(Duration::from_millis(limits.wall_ms));
        tokio::pin!(wall);
        let mut tick = tokio::time::interval(CPU_POLL);
        let cpu_limit = limits.cpu_ms.saturating_mul(1_000_000);
        let mut killed = false;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status.map_err(SandboxError::Supervise)?,
                () = &mut wall, if !killed => { hits.insert(LimitHit::Timeout); killed = true; }
                () = overflow.notified(), if !killed => { hits.insert(LimitHit::OutputTruncated); killed = true; }
                _ = &mut cancel, if !killed => { killed = true; }
                _ = tick.tick(), if !killed => {
                    if cgroup.cpu_ns().map_err(SandboxError::Supervise)? > cpu_limit {
                        hits.insert(LimitHit::CpuTime);
                        killed = true;
                    }
                }
            }
            if killed {
                cgroup.kill_all().map_err(SandboxError::Supervise)?;
            }
        };
        let run = started.elapsed();
        // Whatever the script left behind (a daemon, gVisor's gofer) goes before the pipes are
        // drained: it may hold them open.
        cgroup.kill_all().map_err(SandboxError::Supervise)?;
        let usage = cgroup.usage().map_err(SandboxError::Supervise)?;
        if usage.oom_kills > 0 {
            hits.insert(LimitHit::Oom);
        }
        if usage.pids_refusals > 0 {
            hits.insert(LimitHit::Pids);
        }
        let (stdout, out_truncated) = joined(stdout).await;
        let (stderr, err_truncated) = joined(stderr).await;
        if out_truncated || err_truncated {
            hits.insert(LimitHit::OutputTruncated);
        }
        let collect_from = bundle.join("out");
        let (artifacts_cap, files_cap) = (limits.artifact_bytes, limits.artifact_files);
        let artifacts = tokio::task::spawn_blocking(move || collect(&collect_from, artifacts_cap, files_cap))
            .await
            .map_err(|e| SandboxError::Supervise(io::Error::other(e)))?
            .map_err(SandboxError::Supervise)?;
        let artifacts = match artifacts {
            Some(artifacts) => artifacts,
            None => {
                hits.insert(LimitHit::ArtifactTooLarge);
                Vec::new()
            }
        };
        // A sandbox a limit killed has no exit status of the script's own: the limit says why.
        let stopped = hits.iter().any(|h| *h != LimitHit::ArtifactTooLarge) || killed;
        let exit_code = if stopped { None } else { exit_code(status) };
        Ok(RunReport {
            exit_code,
            stdout,
            stderr,
            artifacts,
            limits_hit: hits.into_iter().collect(),
            run,
            cpu: Duration::from_nanos(usage.cpu_ns),
            memory_peak: usage.memory_peak,
            egress: proxy.map(RunProxy::finish).unwrap_or_default(),
            ..RunReport::default()
        })
    }
}

impl HostSandbox {
    /// The launcher's command line for the run, and (bubblewrap) the open seccomp program the
    /// child hands it as descriptor 3.
    fn command(&self, spec: &RunSpec, bundle: &Path, egress: bool) -> io::Result<(Command, Option<std::fs::File>)> {
        match &self.isolation {
            Isolation::Gvisor { runsc } => {
                let mut command = Command::new(runsc);
                command.arg("--root").arg(&self.state).args(["--network=none", "--ignore-cgroups"]);
                if egress {
                    // Connecting to the one socket bind-mounted into this run; nothing else of
                    // the host's is visible to connect to.
                    command.arg("--host-uds=open");
                }
                command.args(["run", "--bundle"]).arg(bundle).arg(&spec.id);
                Ok((command, None))
            }
            Isolation::Bubblewrap { bwrap, .. } => {
                let seccomp = std::fs::File::open(bundle.join("seccomp.bpf"))?;
                let nobody = oci::NOBODY.to_string();
                let (entry, env) = oci::entry_and_env(egress);
                let mut command = Command::new(bwrap);
                command
                    .args([
                        "--unshare-all",
                        "--unshare-user",
                        "--disable-userns",
                        "--die-with-parent",
                        "--new-session",
                        "--cap-drop",
                        "ALL",
                    ])
                    .args(["--uid", &nobody, "--gid", &nobody, "--hostname", "sandbox"])
                    .arg("--ro-bind")
                    .arg(&self.rootfs.dir)
                    .arg("/")
                    // /dev is bubblewrap's own tmpfs, unsized: read-only, so /tmp stays the one place to write.
                    .args(["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev"])
                    .args(["--size", &spec.limits.tmp_bytes.to_string(), "--tmpfs", "/tmp"])
                    .arg("--ro-bind")
                    .arg(bundle.join("job"))
                    .arg("/job")
                    .arg("--bind")
                    .arg(bundle.join("out"))
                    .arg("/out");
                if egress {
                    command.arg("--ro-bind").arg(bundle.join("egress")).arg("/run/qiria");
                }
                command.arg("--clearenv");
                for variable in &env {
                    if let Some((name, value)) = variable.split_once('=') {
                        command.args(["--setenv", name, value]);
                    }
                }
                command
                    .args(["--chdir", "/tmp", "--seccomp", "3", "--"])
                    .arg(&self.rootfs.python)
                    .args(["-I", "-B", entry]);
                Ok((command, Some(seccomp)))
            }
        }
    }
}

/// What the launcher's child does between fork and exec.
struct Launch {
    procs: Vec<CString>,
    seccomp_fd: Option<std::os::fd::RawFd>,
    unprivileged: bool,
    open_files: u64,
    file_size: u64,
}

impl Launch {
    /// Joins the run's cgroup and dies with the worker; for bubblewrap also sets the limits
    /// the sandbox's kernel (the host's) enforces, hands over the seccomp program as
    /// descriptor 3, and drops to uid/gid 65534 (bubblewrap then maps that id in a user
    /// namespace of its own: the script is never the host's root).
    fn in_child(&self) -> io::Result<()> {
        join_and_tie(&self.procs)?;
        if !self.unprivileged {
            return Ok(());
        }
        let limit = |resource, value: u64| {
            let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
            // SAFETY: setrlimit with a valid pointer to a local.
            if unsafe { libc::setrlimit(resource, &limit) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        };
        limit(libc::RLIMIT_NOFILE, self.open_files)?;
        limit(libc::RLIMIT_FSIZE, self.file_size)?;
        limit(libc::RLIMIT_CORE, 0)?;
        // SAFETY: plain system calls on descriptors and ids; each result is checked.
        unsafe {
            if let Some(fd) = self.seccomp_fd {
                if libc::dup2(fd, 3) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(oci::NOBODY) != 0
                || libc::setuid(oci::NOBODY) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

impl Backend for Arc<HostSandbox> {
    async fn run(&self, spec: RunSpec, cancel: oneshot::Receiver<()>) -> Result<RunReport, SandboxError> {
        let started = Instant::now();
        let bundle = self.runs.join(&spec.id);
        let prepared = {
            let (this, spec, bundle) = (self.clone(), spec.clone(), bundle.clone());
            blocking(move || this.prepare(&spec, &bundle)).await
        };
        let setup = started.elapsed();
        let (cgroup, outcome) = match prepared {
            Ok(cgroup) => {
                let outcome = self.supervise(&spec, &bundle, &cgroup, cancel).await;
                (Some(cgroup), outcome)
            }
            Err(error) => (None, Err(SandboxError::Setup(error))),
        };
        let cleanup_started = Instant::now();
        let cleaned = {
            let (this, id) = (self.clone(), spec.id.clone());
            blocking(move || this.clean(&id, &bundle, cgroup.as_ref())).await
        };
        if let Err(error) = cleaned {
            tracing::error!(run = %spec.id, %error, "a run could not be cleaned up; start-up will sweep it");
        }
        let mut report = outcome?;
        report.setup = setup;
        report.cleanup = cleanup_started.elapsed();
        Ok(report)
    }
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(io::Error::other)?
}

/// Between fork and exec of `runsc run`: join the run's cgroup, and die with the worker.
fn join_and_tie(procs: &[CString]) -> io::Result<()> {
    crate::cgroup::join(procs)?;
    // The signal comes when the *thread* that forked ends; runs are spawned from the runtime's
    // worker threads, which live as long as the worker.
    // SAFETY: prctl with constant arguments.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads `stream` to its end, keeping the first `cap` bytes; past them it tells `overflow`
/// (the run is stopped) and discards the rest. Returns what it kept and whether it cut.
async fn capture(mut stream: impl AsyncRead + Unpin, cap: usize, overflow: Arc<Notify>) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut truncated = false;
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let room = cap.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
        if n > room && !truncated {
            truncated = true;
            overflow.notify_one();
        }
    }
    (kept, truncated)
}

async fn joined(task: Option<tokio::task::JoinHandle<(Vec<u8>, bool)>>) -> (Vec<u8>, bool) {
    match task {
        Some(task) => task.await.unwrap_or_default(),
        None => (Vec::new(), false),
    }
}

fn exit_code(status: std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.code().or_else(|| status.signal().map(|signal| 128 + signal))
}

/// The run's `/out`: a tmpfs of the artifact cap (plus a little, so passing it shows) and a
/// bounded number of inodes, owned by the script's uid.
fn mount_out(out: &Path, limits: &RunLimits) -> io::Result<()> {
    let target = CString::new(out.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    let options = format!(
        "size={},nr_inodes={},mode=0700,uid={nobody},gid={nobody}",
        limits.artifact_bytes + OUT_SLACK,
        limits.artifact_files + 16,
        nobody = oci::NOBODY
    );
    let data = CString::new(options).map_err(io::Error::other)?;
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::new(
            io::Error::last_os_error().kind(),
            format!("mounting /out: {}", io::Error::last_os_error()),
        ));
    }
    Ok(())
}

/// Detaches `dir`'s mount, if it has one.
fn unmount(dir: &Path) {
    if let Ok(target) = CString::new(dir.as_os_str().as_encoded_bytes()) {
        // SAFETY: umount2(2) on a NUL-terminated path; EINVAL (not a mount) is fine.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// The regular files under `out` (links, devices, fifos are never followed or read), or
/// `None` when they pass the caps. The script is gone by now, so nothing changes under us.
fn collect(out: &Path, cap: u64, max_files: usize) -> io::Result<Option<Vec<Artifact>>> {
    let mut found = Vec::new();
    let mut total = 0u64;
    let mut stack = vec![(out.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = std::fs::symlink_metadata(entry.path())?;
            if meta.is_dir() && depth < 8 {
                stack.push((entry.path(), depth + 1));
            } else if meta.is_file() {
                total = total.saturating_add(meta.len());
                if total > cap || found.len() >= max_files {
                    return Ok(None);
                }
                let mut file =
                    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(entry.path())?;
                let mut content = Vec::with_capacity(meta.len() as usize);
                std::io::Read::read_to_end(&mut std::io::Read::take(&mut file, cap), &mut content)?;
                let name = entry.path().strip_prefix(out).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
                found.push(Artifact { name, content });
            }
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Some(found))
}

/// `binary`, when it runs (`--version`).
fn installed(binary: &Path, package: &str) -> io::Result<PathBuf> {
    let version = std::process::Command::new(binary).arg("--version").env_clear().output().map_err(|e| {
        io::Error::new(e.kind(), format!("{} at {}: {e} (install the {package} package)", package, binary.display()))
    })?;
    if !version.status.success() {
        return Err(io::Error::other(format!("{} --version failed", binary.display())));
    }
    Ok(binary.to_path_buf())
}
