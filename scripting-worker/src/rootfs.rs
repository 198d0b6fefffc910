//! The sandbox's root filesystem, made at start-up from the host's Python: the interpreter,
//! its standard library (tests, IDLE, Tk and pip's bootstrap left out), the shared libraries
//! `ldd` lists for them, the allow-listed pure-Python packages, and the empty mount points.
//! Nothing else of the host is in it — no shell, no package manager, no site-packages of the
//! host. It is mounted read-only by every run; one build serves every run until its inputs
//! change (a stamp of them is kept beside it). Never committed: it is made where it runs.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Parts of the standard library no script needs; they are large, and some start things.
const LEFT_OUT: [&str; 8] =
    ["test", "idlelib", "tkinter", "turtledemo", "ensurepip", "site-packages", "dist-packages", "lib2to3"];

/// Mount points the sandbox's mounts need (a read-only root cannot grow them).
const MOUNT_POINTS: [&str; 7] = ["proc", "dev", "sys", "tmp", "out", "job", "run/qiria"];

/// The egress bootstrap (see `egress`), where the root filesystem holds it.
pub(crate) const EGRESS_BOOTSTRAP: &str = "/usr/lib/qiria/egress_bootstrap.py";
const EGRESS_BOOTSTRAP_SOURCE: &str = include_str!("sandbox/egress_bootstrap.py");

/// A built root filesystem.
#[derive(Debug, Clone)]
pub(crate) struct RootFs {
    /// Its directory.
    pub(crate) dir: PathBuf,
    /// The interpreter inside it.
    pub(crate) python: PathBuf,
}

/// What the host's Python says of itself.
struct HostPython {
    executable: PathBuf,
    stdlib: PathBuf,
    site: PathBuf,
}

/// Builds (or reuses) the root filesystem under `state_dir/rootfs` from `python` and
/// `packages`.
pub(crate) fn build(state_dir: &Path, python: &Path, packages: &[PathBuf]) -> io::Result<RootFs> {
    let host = describe(python)?;
    for package in packages {
        refuse_compiled(package)?;
    }
    let dir = state_dir.join("rootfs");
    let stamp = stamp(&host, packages)?;
    let inside = |p: &Path| PathBuf::from("/").join(p.strip_prefix("/").unwrap_or(p));
    let rootfs = RootFs { dir: dir.clone(), python: inside(&host.executable) };
    if std::fs::read_to_string(dir.join(".qiria-rootfs")).ok().as_deref() == Some(stamp.as_str()) {
        return Ok(rootfs);
    }
    // Built aside and renamed into place, so a worker killed mid-build never uses half of one.
    let building = state_dir.join(format!("rootfs.building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    std::fs::create_dir_all(&building)?;
    let at = |p: &Path| building.join(p.strip_prefix("/").unwrap_or(p));

    copy_file(&host.executable, &at(&host.executable))?;
    copy_tree(&host.stdlib, &at(&host.stdlib), true)?;
    let mut libraries = BTreeSet::new();
    shared_libraries(&host.executable, &mut libraries)?;
    for module in files_under(&host.stdlib.join("lib-dynload"))? {
        shared_libraries(&module, &mut libraries)?;
    }
    for library in &libraries {
        copy_file(library, &at(library))?;
    }
    std::fs::create_dir_all(at(&host.site))?;
    for package in packages {
        let name = package.file_name().ok_or_else(|| io::Error::other(format!("{}: no name", package.display())))?;
        let target = at(&host.site).join(name);
        if package.is_dir() {
            copy_tree(package, &target, false)?;
        } else {
            copy_file(package, &target)?;
        }
    }
    // `python3` by its usual name too.
    let bin = at(Path::new("/usr/bin"));
    std::fs::create_dir_all(&bin)?;
    if !bin.join("python3").exists() {
        std::os::unix::fs::symlink(&rootfs.python, bin.join("python3"))?;
    }
    for point in MOUNT_POINTS {
        std::fs::create_dir_all(building.join(point))?;
    }
    copy_text(EGRESS_BOOTSTRAP_SOURCE, &at(Path::new(EGRESS_BOOTSTRAP)))?;
    std::fs::create_dir_all(building.join("etc"))?;
    std::fs::write(building.join("etc/passwd"), "nobody:x:65534:65534:nobody:/nonexistent:/nonexistent\n")?;
    std::fs::write(building.join("etc/group"), "nogroup:x:65534:\n")?;
    std::fs::write(building.join("etc/hosts"), "127.0.0.1 localhost\n")?;
    std::fs::write(building.join(".qiria-rootfs"), &stamp)?;
    let old = state_dir.join(format!("rootfs.old-{}", std::process::id()));
    if dir.exists() {
        std::fs::rename(&dir, &old)?;
    }
    std::fs::rename(&building, &dir)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(rootfs)
}

fn describe(python: &Path) -> io::Result<HostPython> {
    let output = Command::new(python)
        .args(["-I", "-c", "import sys, sysconfig, site; print(sys.executable); print(sysconfig.get_paths()['stdlib']); print(site.getsitepackages()[0])"])
        .env_clear()
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", python.display())))?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "{} does not run: {}",
            python.display(),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut lines = text.lines().map(PathBuf::from);
    let (Some(executable), Some(stdlib), Some(site)) = (lines.next(), lines.next(), lines.next()) else {
        return Err(io::Error::other(format!("{} did not describe itself", python.display())));
    };
    Ok(HostPython { executable: executable.canonicalize()?, stdlib: stdlib.canonicalize()?, site })
}

/// A package with compiled code could be anything: only pure Python is allowed.
fn refuse_compiled(package: &Path) -> io::Result<()> {
    let files = if package.is_dir() { files_under(package)? } else { vec![package.to_path_buf()] };
    if let Some(compiled) = files.iter().find(|f| {
        let name = f.to_string_lossy();
        name.ends_with(".so") || name.contains(".so.") || name.ends_with(".pyd") || name.ends_with(".dylib")
    }) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "sandbox.packages: {} has compiled code ({}); only pure-Python packages are allowed",
                package.display(),
                compiled.display()
            ),
        ));
    }
    if files.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("sandbox.packages: {} has no files", package.display()),
        ));
    }
    Ok(())
}

/// What the root filesystem is made of: rebuilt when any of it changes.
fn stamp(host: &HostPython, packages: &[PathBuf]) -> io::Result<String> {
    let mut hash = Sha256::new();
    for path in [&host.executable, &host.stdlib].into_iter().chain(packages) {
        let meta = std::fs::metadata(path)?;
        hash.update(path.as_os_str().as_encoded_bytes());
        hash.update(meta.len().to_le_bytes());
        hash.update(format!("{:?}", meta.modified().ok()).as_bytes());
    }
    hash.update(LEFT_OUT.join(",").as_bytes());
    hash.update(EGRESS_BOOTSTRAP_SOURCE.as_bytes());
    Ok(hex::encode(hash.finalize()))
}

/// The libraries the dynamic loader would map for `binary`, by `ldd`.
fn shared_libraries(binary: &Path, into: &mut BTreeSet<PathBuf>) -> io::Result<()> {
    let output = Command::new("ldd").arg(binary).env_clear().output()?;
    // Not a dynamic executable (a static module, a script): nothing to add.
    if !output.status.success() {
        return Ok(());
    }
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)".
        let path = line.split("=>").last().and_then(|rest| rest.split_whitespace().next());
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            into.insert(PathBuf::from(path));
        }
    }
    Ok(())
}

fn files_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    if !dir.is_dir() {
        return Ok(files);
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    Ok(files)
}

fn copy_text(text: &str, to: &Path) -> io::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(to, text)
}

/// Copies `from` to `to`, following symlinks (a library is often one), world-readable.
fn copy_file(from: &Path, to: &Path) -> io::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(from, to).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", from.display())))?;
    Ok(())
}

/// Copies a directory tree; `top_level_filter` leaves out [`LEFT_OUT`] at its top. Relative
/// symlinks are kept; absolute ones (into the host's /etc, say) are not followed or kept.
fn copy_tree(from: &Path, to: &Path, top_level_filter: bool) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if top_level_filter && LEFT_OUT.iter().any(|left| name == *left) {
            continue;
        }
        let kind = entry.file_type()?;
        let target = to.join(&name);
        if kind.is_dir() {
            copy_tree(&entry.path(), &target, false)?;
        } else if kind.is_symlink() {
            let link = std::fs::read_link(entry.path())?;
            if link.is_relative() {
                std::os::unix::fs::symlink(link, target)?;
            }
        } else if kind.is_file() {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
