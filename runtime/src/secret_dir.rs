//! Reading a directory laid out like a mounted Kubernetes secret: one file per key named
//! `<kid>.<ext>`, hidden entries (`..data`, dotfiles) skipped, symlinks followed, and an
//! optional `active` file naming the key in use. Key material is zeroed when dropped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// One key file.
pub struct SecretFile {
    /// The file name without its extension.
    pub kid: String,
    /// Where it is.
    pub path: PathBuf,
    /// Its content.
    pub bytes: Zeroizing<Vec<u8>>,
}

/// A file of the directory that could not be read.
pub type Unreadable = (PathBuf, std::io::Error);

/// The visible regular files of `dir` whose extension `wanted` accepts, sorted by name; the
/// first file that cannot be read fails the whole read (secrets that must all be there).
pub fn read(dir: &Path, wanted: impl Fn(&str) -> bool) -> Result<Vec<SecretFile>, Unreadable> {
    let (files, unreadable) = read_each(dir, wanted)?;
    match unreadable.into_iter().next() {
        Some(first) => Err(first),
        None => Ok(files),
    }
}

/// Like [`read`], but a file that cannot be read is returned apart and the others are kept
/// (key sets: one bad file must not keep a removed key alive, nor drop the good ones). Only an
/// unreadable directory fails.
pub fn read_each(dir: &Path, wanted: impl Fn(&str) -> bool) -> Result<(Vec<SecretFile>, Vec<Unreadable>), Unreadable> {
    let (mut files, mut unreadable) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(dir).map_err(|e| (dir.to_path_buf(), e))? {
        let path = entry.map_err(|e| (dir.to_path_buf(), e))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if name.starts_with('.') || !path.is_file() || !wanted(extension) {
            continue;
        }
        match std::fs::read(&path) {
            Ok(bytes) => {
                let kid = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
                files.push(SecretFile { kid, path, bytes: Zeroizing::new(bytes) });
            }
            Err(e) => unreadable.push((path, e)),
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    unreadable.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((files, unreadable))
}

/// The kid in use: the configured one, else the `active` file's, else the only key's.
pub fn active(dir: &Path, configured: Option<&str>, kids: &BTreeSet<String>) -> Result<String, String> {
    let marker = dir.join("active");
    let active = match configured {
        Some(kid) => kid.to_string(),
        None if marker.is_file() => {
            std::fs::read_to_string(&marker).map_err(|e| format!("{}: {e}", marker.display()))?.trim().to_string()
        }
        None if kids.len() == 1 => kids.iter().next().cloned().unwrap_or_default(),
        None => return Err(format!("{} keys and no `active` file in {}", kids.len(), dir.display())),
    };
    if kids.contains(&active) {
        Ok(active)
    } else {
        Err(format!("kid `{active}` is not in {}", dir.display()))
    }
}
