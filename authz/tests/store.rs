//! The issuer's store behaves the same on embedded SQLite and on a real PostgreSQL server.

use std::sync::Arc;

use authz::sealing::MasterKeys;
use authz::store::{Store, StoreError, User};

fn user(name: &str) -> User {
    User {
        id: format!("id-{name}"),
        username: name.into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".into(),
        roles: vec!["User".into()],
        disabled: false,
        email: Some(format!("{name}@example.org")),
        display_name: Some(format!("{name} Lovelace")),
    }
}

/// Seals personal data and secrets: none of them appear in the stored bytes; after a new
/// master key and `rekey`, the old master key can go and everything still opens.
async fn sealed_at_rest(url: &str, master: &std::path::Path, stored_bytes: impl Fn() -> Vec<u8>) {
    let store = Store::open(url, Arc::new(MasterKeys::load_dir(master, None).unwrap())).await.unwrap();
    let secret_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2VjcmV0c2FsdA$c2VjcmV0aGFzaA";
    let mut grace = user("grace");
    grace.password_hash = secret_hash.into();
    store.add_user(&grace).await.unwrap();
    let bytes = stored_bytes();
    assert!(!bytes.is_empty());
    for plain in ["grace@example.org", "grace Lovelace", secret_hash, "$argon2id"] {
        assert!(!bytes.windows(plain.len()).any(|w| w == plain.as_bytes()), "`{plain}` is stored in the clear");
    }
    assert!(bytes.windows(5).any(|w| w == b"grace"), "the dump holds the rows (usernames stay searchable)");

    MasterKeys::generate(master, "m2").unwrap();
    let both = Arc::new(MasterKeys::load_dir(master, Some("m2")).unwrap());
    let store = Store::open(url, both).await.unwrap();
    assert_eq!(store.rekey().await.unwrap(), store.users().await.unwrap().len() as u64);
    assert_eq!(store.rekey().await.unwrap(), 0, "nothing left under the old key");
    std::fs::remove_file(master.join("m1.key")).unwrap();
    let only_new = Store::open(url, Arc::new(MasterKeys::load_dir(master, None).unwrap())).await.unwrap();
    let reread = only_new.user_by_email("grace@example.org").await.unwrap().unwrap();
    assert_eq!((reread.password_hash.as_str(), reread.display_name.as_deref()), (secret_hash, Some("grace Lovelace")));
}

fn master_keys(dir: &std::path::Path) -> Arc<MasterKeys> {
    MasterKeys::generate(dir, "m1").unwrap();
    Arc::new(MasterKeys::load_dir(dir, None).unwrap())
}

async fn exercise(store: Store) {
    store.add_user(&user("ada")).await.unwrap();
    assert!(matches!(store.add_user(&user("ada")).await, Err(StoreError::Duplicate(_))));
    assert_eq!(store.user_by_name("ada").await.unwrap(), Some(user("ada")));
    assert_eq!(store.user_by_id("id-ada").await.unwrap().unwrap().username, "ada");
    assert_eq!(store.user_by_email(" ADA@example.org").await.unwrap().unwrap().id, "id-ada");
    assert_eq!(store.user_by_name("nobody").await.unwrap(), None);

    store.set_roles("ada", &["Admin".into(), "Auditor".into()]).await.unwrap();
    assert_eq!(store.user_by_name("ada").await.unwrap().unwrap().roles, vec!["Admin", "Auditor"]);
    assert!(matches!(store.set_roles("nobody", &[]).await, Err(StoreError::NoSuchUser(_))));
    store.disable("ada").await.unwrap();
    assert!(store.user_by_name("ada").await.unwrap().unwrap().disabled);

    store.insert_refresh("h1", "fam", "id-ada", 4_000_000_000).await.unwrap();
    store.insert_refresh("h2", "fam", "id-ada", 4_000_000_000).await.unwrap();
    assert!(store.mark_rotated("h1").await.unwrap(), "first rotation wins");
    assert!(!store.mark_rotated("h1").await.unwrap(), "a second rotation of the same token loses");
    assert_eq!(store.revoke_family("fam").await.unwrap(), 2);
    let h2 = store.refresh("h2").await.unwrap().unwrap();
    assert!(h2.revoked_at.is_some() && h2.rotated_at.is_none());
    assert!(!store.mark_rotated("h2").await.unwrap(), "a revoked token cannot rotate");
    assert_eq!(store.users().await.unwrap().len(), 1);
}

#[tokio::test]
async fn sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let keys = master_keys(&dir.path().join("master"));
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    exercise(Store::open(&url, keys.clone()).await.unwrap()).await;
    // Reopening an existing file applies no migration twice.
    Store::open(&url, keys).await.unwrap();
    let db = dir.path().join("store.db");
    sealed_at_rest(&url, &dir.path().join("master"), || {
        // The database file and its write-ahead log, if any: every byte SQLite wrote.
        let mut bytes = std::fs::read(&db).unwrap();
        bytes.extend(std::fs::read(db.with_extension("db-wal")).unwrap_or_default());
        bytes
    })
    .await;
}

#[tokio::test]
async fn postgres_store() {
    if let Some(url) = qiria_test_support::postgres::fresh_database() {
        let dir = tempfile::tempdir().unwrap();
        let keys = master_keys(dir.path());
        exercise(Store::open(&url, keys.clone()).await.unwrap()).await;
        Store::open(&url, keys).await.unwrap();
        sealed_at_rest(&url, dir.path(), || {
            let dump = std::process::Command::new("pg_dump").arg(&url).output().unwrap();
            assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
            dump.stdout
        })
        .await;
    }
}
