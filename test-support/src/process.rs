//! A child process that is killed when dropped, with its output kept in a file for failures.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running child process.
pub struct Process {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// Starts `program args…`, stdout and stderr appended to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> std::io::Result<Self> {
        Self::spawn_with_env(name, program, args, log, &[])
    }

    /// [`Process::spawn`] with `env` added to the inherited environment.
    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        env: &[(&str, &str)],
    ) -> std::io::Result<Self> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        Ok(Self { name: name.to_string(), child: Some(child), log: log.to_path_buf() })
    }

    /// The OS process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the process wrote so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills it and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for it to exit on its own (after a signal the caller sent).
    pub fn wait(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Panics with the process output: for setup steps that must succeed.
    pub fn fail(&self, what: &str) -> ! {
        panic!("{} {what}; its output:\n{}", self.name, self.output())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
        keep_log(&self.name, &self.log);
    }
}

/// Copies a finished process's log under `target/test-logs/`, where `./dev test` scans every
/// log of the suite for secrets (`scan-logs`) once it has run.
fn keep_log(name: &str, log: &Path) {
    let Some(dir) = test_logs_dir() else { return };
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let unique = format!("{name}-{}-{}.log", std::process::id(), rand::random::<u32>());
    let _ = std::fs::copy(log, dir.join(unique));
}

/// `target/test-logs`, beside the running test binary (`target/<profile>/deps/…`).
fn test_logs_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let target = exe.ancestors().find(|a| a.file_name().is_some_and(|n| n == "target"))?;
    Some(target.join("test-logs"))
}
