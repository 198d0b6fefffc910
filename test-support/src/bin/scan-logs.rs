//! `scan-logs DIR`: fails (exit 1) if any log the test suite's processes wrote (test-support
//! keeps a copy of each under `target/test-logs/`) holds a secret: a whole JWT (three
//! base64url segments, a JSON header), a `Bearer` credential, a PEM private key, or the
//! password every test user gets. Prints each finding as `file:line: what` — never the secret.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use qiria_test_support::issuer::PASSWORD;

fn main() -> ExitCode {
    let Some(dir) = std::env::args().nth(1).map(PathBuf::from) else {
        eprintln!("usage: scan-logs DIR");
        return ExitCode::from(2);
    };
    let mut files = Vec::new();
    walk(&dir, &mut files);
    let mut findings = 0usize;
    for file in &files {
        let Ok(bytes) = std::fs::read(file) else { continue };
        let text = String::from_utf8_lossy(&bytes);
        for (n, line) in text.lines().enumerate() {
            if let Some(what) = secret_in(line) {
                findings += 1;
                println!("{}:{}: {what}", file.display(), n + 1);
            }
        }
    }
    println!("scan-logs: {} log files, {findings} secrets found", files.len());
    if findings == 0 && !files.is_empty() {
        ExitCode::SUCCESS
    } else {
        if files.is_empty() {
            println!("scan-logs: no log to scan in {} (did the suite run?)", dir.display());
        }
        ExitCode::FAILURE
    }
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, files);
        } else {
            files.push(path);
        }
    }
}

/// What kind of secret `line` holds, if any.
fn secret_in(line: &str) -> Option<&'static str> {
    if line.contains(PASSWORD) {
        return Some("the test users' password");
    }
    if line.contains("PRIVATE KEY-----") {
        return Some("a PEM private key");
    }
    if let Some(at) = line.find("Bearer ") {
        let credential: String = line[at + 7..].chars().take_while(|c| !c.is_whitespace() && *c != '"').collect();
        if credential.len() >= 16 {
            return Some("a Bearer credential");
        }
    }
    line.match_indices("eyJ").any(|(at, _)| is_jwt(&line[at..])).then_some("a whole JWT")
}

/// Whether `text` starts with `header.payload.signature`, each base64url and long enough to
/// be real (the header `eyJ…` is base64 for `{"`).
fn is_jwt(text: &str) -> bool {
    let token: String = text.chars().take_while(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c)).collect();
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3 && parts[0].len() >= 10 && parts[1].len() >= 10 && parts[2].len() >= 16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_found_and_ordinary_lines_are_not() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg";
        assert_eq!(secret_in(&format!("{{\"token\":\"{jwt}\"}}")), Some("a whole JWT"));
        assert_eq!(secret_in("authorization: Bearer abcdefghijklmnopqrstu"), Some("a Bearer credential"));
        assert_eq!(secret_in("-----BEGIN PRIVATE KEY-----"), Some("a PEM private key"));
        assert_eq!(secret_in(&format!("password={PASSWORD}")), Some("the test users' password"));
        for fine in [
            "{\"message\":\"Bearer realm=\\\"qiria\\\"\"}",
            "eyJhbGciOiJSUzI1NiJ9 alone is a header, not a token",
            "{\"event\":\"login_failed\",\"username\":\"mallory\"}",
            "a hash 3f0c1e9a5b7d4c2e9f106a8b2c4d6e8f.a.b",
        ] {
            assert_eq!(secret_in(fine), None, "{fine}");
        }
    }
}
