//! A fresh database on the PostgreSQL server `./dev test` starts (`QIRIA_TEST_POSTGRES_URL`).

use std::process::Command;

/// A new, empty database's URL; `None` outside CI when no server was started (in CI a
/// missing server is a failure, not a skip).
pub fn fresh_database() -> Option<String> {
    let Ok(admin) = std::env::var("QIRIA_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "QIRIA_TEST_POSTGRES_URL must be set in CI (./dev test starts PostgreSQL)"
        );
        eprintln!("no PostgreSQL (QIRIA_TEST_POSTGRES_URL unset): run ./dev test for the PostgreSQL half");
        return None;
    };
    let name = format!("qiria_test_{}", rand::random::<u64>());
    let out = Command::new("psql")
        .args([admin.as_str(), "-v", "ON_ERROR_STOP=1", "-q", "-c", &format!("CREATE DATABASE {name}")])
        .output()
        .expect("psql");
    assert!(out.status.success(), "CREATE DATABASE failed: {}", String::from_utf8_lossy(&out.stderr));
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    Some(format!("{base}/{name}"))
}
