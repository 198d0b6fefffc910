//! One cgroup (v1) per run, in the memory, pids, cpu and cpuacct hierarchies: it holds the
//! whole sandbox — `runsc run`, gVisor's gofer and kernel, and so every process of the script —
//! from before its first instruction (the child joins it between fork and exec), so its limits
//! bind all of it and its counters say which limit fired. runsc itself is told to leave cgroups
//! alone (`--ignore-cgroups`): it would otherwise move the sandbox to a cgroup of its own and
//! delete it, counters and all, before they could be read.
//!
//! Every run's cgroup is a child of the configured parent, so a parent with limits of its own
//! (a test's outer cgroup, a node's slice) binds them all, and start-up can find and remove
//! what a killed worker left.
#![allow(unsafe_code, reason = "libc: kill(2) of a cgroup's processes, and joining the cgroup between fork and exec")]

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::RunLimits;

/// The controllers a run's cgroup is made in.
const CONTROLLERS: [&str; 4] = ["memory", "pids", "cpu", "cpuacct"];

/// How long killing a cgroup's processes may take before it is reported as stuck.
const KILL_PATIENCE: Duration = Duration::from_secs(10);

/// The cgroup hierarchies: one directory per controller under the v1 mount.
#[derive(Debug, Clone)]
pub(crate) struct Hierarchies {
    parent: Vec<(&'static str, PathBuf)>,
}

impl Hierarchies {
    /// The hierarchies under `mount` (normally `/sys/fs/cgroup`), with `parent` made in each.
    pub(crate) fn open(mount: &Path, parent: &str) -> io::Result<Self> {
        let relative = parent.trim_start_matches('/');
        let mut dirs: Vec<(&'static str, PathBuf)> = Vec::new();
        let mut seen = Vec::new();
        for controller in CONTROLLERS {
            let root = mount.join(controller);
            if !root.join("cgroup.procs").exists() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "no cgroup v1 {controller} hierarchy at {} (the runsc backend needs cgroup v1)",
                        root.display()
                    ),
                ));
            }
            // `cpu` and `cpuacct` are often one hierarchy under two names: make and join it once.
            let canonical = root.canonicalize()?;
            if seen.contains(&canonical) {
                continue;
            }
            seen.push(canonical);
            let dir = root.join(relative);
            std::fs::create_dir_all(&dir)?;
            dirs.push((controller, dir));
        }
        Ok(Self { parent: dirs })
    }

    /// Makes the cgroup of run `name`, with `limits` set on it.
    pub(crate) fn create(&self, name: &str, limits: &RunLimits) -> io::Result<RunCgroup> {
        let mut cgroup = RunCgroup { dirs: Vec::new() };
        let mut made = Ok(());
        for (controller, parent) in &self.parent {
            let dir = parent.join(name);
            made = std::fs::create_dir(&dir);
            if made.is_err() {
                break;
            }
            cgroup.dirs.push((controller, dir));
        }
        if let Err(error) = made.and_then(|()| cgroup.limit(limits)) {
            // Half made: nothing runs in it yet, so it goes at once.
            let _ = cgroup.remove();
            return Err(error);
        }
        Ok(cgroup)
    }

    /// Kills everything in every run cgroup under the parent and removes them: what a killed
    /// worker left. Returns how many it removed.
    pub(crate) fn sweep(&self) -> io::Result<usize> {
        let mut removed = 0;
        for (controller, parent) in &self.parent {
            for entry in std::fs::read_dir(parent)? {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    let cgroup = RunCgroup { dirs: vec![(controller, entry.path())] };
                    cgroup.remove()?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// The cgroup of one run.
#[derive(Debug)]
pub(crate) struct RunCgroup {
    dirs: Vec<(&'static str, PathBuf)>,
}

/// What the host saw the sandbox use, and which of its limits fired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    /// CPU time of the whole sandbox, in nanoseconds.
    pub(crate) cpu_ns: u64,
    /// Peak memory, in bytes.
    pub(crate) memory_peak: u64,
    /// Processes the kernel's OOM killer killed in it.
    pub(crate) oom_kills: u64,
    /// Forks or thread creations refused at the pids limit.
    pub(crate) pids_refusals: u64,
}

impl RunCgroup {
    /// The `cgroup.procs` files a child writes itself into before it runs (see [`join`]).
    pub(crate) fn procs_files(&self) -> io::Result<Vec<CString>> {
        self.dirs
            .iter()
            .map(|(_, dir)| {
                CString::new(dir.join("cgroup.procs").into_os_string().into_encoded_bytes())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
            })
            .collect()
    }

    fn limit(&self, limits: &RunLimits) -> io::Result<()> {
        let memory = limits.memory_bytes.to_string();
        self.write("memory", "memory.limit_in_bytes", &memory)?;
        // No swap either, where the kernel accounts it (it must not be below the limit above).
        if self.path("memory", "memory.memsw.limit_in_bytes").is_some_and(|p| p.exists()) {
            self.write("memory", "memory.memsw.limit_in_bytes", &memory)?;
        }
        self.write("pids", "pids.max", &limits.pids.to_string())?;
        self.write("cpu", "cpu.cfs_period_us", "100000")?;
        self.write("cpu", "cpu.cfs_quota_us", &(u64::from(limits.cpu_percent) * 1_000).to_string())
    }

    /// CPU time used so far, in nanoseconds.
    pub(crate) fn cpu_ns(&self) -> io::Result<u64> {
        self.read_u64("cpuacct", "cpuacct.usage")
    }

    /// Its counters now.
    pub(crate) fn usage(&self) -> io::Result<Usage> {
        Ok(Usage {
            cpu_ns: self.cpu_ns()?,
            memory_peak: self.read_u64("memory", "memory.max_usage_in_bytes")?,
            oom_kills: self.keyed("memory", "memory.oom_control", "oom_kill")?,
            pids_refusals: self.keyed("pids", "pids.events", "max")?,
        })
    }

    /// SIGKILLs every process in it until none is left.
    pub(crate) fn kill_all(&self) -> io::Result<()> {
        let started = Instant::now();
        loop {
            let mut alive = 0;
            for (_, dir) in &self.dirs {
                let procs = match std::fs::read_to_string(dir.join("cgroup.procs")) {
                    Ok(procs) => procs,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                for pid in procs.lines().filter_map(|l| l.trim().parse::<libc::pid_t>().ok()) {
                    alive += 1;
                    // SAFETY: kill(2) with a pid read from the cgroup and a constant signal; a
                    // pid that has already gone gives ESRCH, which is what is wanted.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            if alive == 0 {
                return Ok(());
            }
            if started.elapsed() > KILL_PATIENCE {
                return Err(io::Error::other(format!("{alive} processes of the run survived SIGKILL")));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills what is left in it and removes it from every hierarchy.
    pub(crate) fn remove(&self) -> io::Result<()> {
        self.kill_all()?;
        for (_, dir) in &self.dirs {
            let started = Instant::now();
            // A process just killed leaves its cgroup a moment after; rmdir says EBUSY till then.
            loop {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if started.elapsed() < KILL_PATIENCE => {
                        tracing::debug!(error = %e, dir = %dir.display(), "cgroup not removable yet");
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    fn path(&self, controller: &str, file: &str) -> Option<PathBuf> {
        self.dirs.iter().find(|(c, _)| *c == controller).map(|(_, d)| d.join(file)).or_else(|| {
            // `cpuacct` shares `cpu`'s directory where the two are one hierarchy.
            let alias = if controller == "cpuacct" { "cpu" } else { "cpuacct" };
            self.dirs.iter().find(|(c, _)| *c == alias).map(|(_, d)| d.join(file))
        })
    }

    fn write(&self, controller: &str, file: &str, value: &str) -> io::Result<()> {
        let path = self.path(controller, file).ok_or_else(|| io::Error::other(format!("no {controller} cgroup")))?;
        std::fs::write(&path, value).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }

    fn read_u64(&self, controller: &str, file: &str) -> io::Result<u64> {
        let path = self.path(controller, file).ok_or_else(|| io::Error::other(format!("no {controller} cgroup")))?;
        let text = std::fs::read_to_string(&path)?;
        text.trim().parse().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))
    }

    /// The value of `key` in a `key value` per line file (`memory.oom_control`, `pids.events`).
    fn keyed(&self, controller: &str, file: &str, key: &str) -> io::Result<u64> {
        let path = self.path(controller, file).ok_or_else(|| io::Error::other(format!("no {controller} cgroup")))?;
        let text = std::fs::read_to_string(&path)?;
        Ok(text
            .lines()
            .filter_map(|line| line.split_once(' '))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0))
    }
}

/// Moves the calling process into the cgroups whose `cgroup.procs` files are `procs` (writing
/// "0" names the writer). Meant for between fork and exec, so it only makes system calls.
pub(crate) fn join(procs: &[CString]) -> io::Result<()> {
    for file in procs {
        // SAFETY: open/write/close on a NUL-terminated path and a static buffer: async-signal
        // safe, as required between fork and exec.
        unsafe {
            let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if written != 1 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}
