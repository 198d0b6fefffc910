//! The issuer's store behaves the same on embedded SQLite and on a real PostgreSQL server:
//! users sealed at rest and found in any case, refresh families rotated, reused and revoked
//! atomically under concurrency, and a migration that refuses case-duplicate usernames.

use std::sync::Arc;

use issuer::store::{Rotation, Store, StoreError, User};
use qiria_store::sealing::MasterKeys;

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

    assert_eq!(store.user_by_name("ADA").await.unwrap().unwrap().id, "id-ada", "usernames are case-folded");
    assert!(matches!(store.add_user(&user("Ada")).await, Err(StoreError::Duplicate(_))), "Ada is ada");

    let far = 4_000_000_000;
    store.start_family("fam", "id-ada", far, "h1", far).await.unwrap();
    assert!(matches!(store.rotate("h1", "h2", 3600).await.unwrap(), Rotation::Rotated { .. }), "first rotation wins");
    let reused = store.rotate("h1", "h3", 3600).await.unwrap();
    assert!(
        matches!(reused, Rotation::Reused { revoked: 2, .. }),
        "reuse revokes both tokens of the family: {reused:?}"
    );
    assert_eq!(store.rotate("h2", "h4", 3600).await.unwrap(), Rotation::Refused, "the family is revoked");
    assert_eq!(store.rotate("nope", "h5", 3600).await.unwrap(), Rotation::Refused);

    // An ended family refuses however fresh its token.
    store.start_family("old", "id-ada", 1, "o1", far).await.unwrap();
    assert_eq!(store.rotate("o1", "o2", 3600).await.unwrap(), Rotation::Refused);
    assert_eq!(store.users().await.unwrap().len(), 1);
}

/// N concurrent refreshes of one token: exactly one gets a new token and the family ends
/// revoked; a revoke racing a refresh leaves the family revoked, the refresh's token included.
async fn concurrent_rotation(store: Store) {
    let far = 4_000_000_000;
    store.add_user(&user("bo")).await.unwrap();
    for round in 0..5 {
        let family = format!("race-{round}");
        store.start_family(&family, "id-bo", far, &format!("{family}-0"), far).await.unwrap();
        let attempts = (0..8).map(|i| {
            let store = store.clone();
            let (token, next) = (format!("{family}-0"), format!("{family}-next-{i}"));
            tokio::spawn(async move { (next.clone(), store.rotate(&token, &next, 3600).await.unwrap()) })
        });
        let outcomes: Vec<(String, Rotation)> =
            futures_util::future::join_all(attempts).await.into_iter().map(Result::unwrap).collect();
        let winners: Vec<&String> =
            outcomes.iter().filter(|(_, r)| matches!(r, Rotation::Rotated { .. })).map(|(next, _)| next).collect();
        assert_eq!(winners.len(), 1, "exactly one refresh wins: {outcomes:?}");
        assert!(outcomes.iter().any(|(_, r)| matches!(r, Rotation::Reused { .. })), "the losers saw reuse");
        assert_eq!(store.rotate(winners[0], "after", 3600).await.unwrap(), Rotation::Refused, "family revoked");

        let family = format!("revoke-race-{round}");
        store.start_family(&family, "id-bo", far, &format!("{family}-0"), far).await.unwrap();
        let (first, next) = (format!("{family}-0"), format!("{family}-1"));
        let (refresh, revoke) = tokio::join!(store.rotate(&first, &next, 3600), store.revoke_family_of(&first));
        refresh.unwrap();
        assert!(revoke.unwrap().is_some());
        let after = store.rotate(&format!("{family}-1"), &format!("{family}-2"), 3600).await.unwrap();
        assert_eq!(after, Rotation::Refused, "nothing from a revoked family works, whichever ran first");
    }
}

/// A database written before usernames were case-folded, with `Ada` and `ada`: the upgrade
/// is refused and names them, and nothing is merged.
async fn case_duplicates_refused(url: &str, keys: Arc<MasterKeys>) {
    let first = tempfile::tempdir().unwrap();
    let migrations = qiria_test_support::workspace_root().join("issuer/migrations");
    std::fs::copy(
        migrations.join("0001_users_and_refresh_tokens.sql"),
        first.path().join("0001_users_and_refresh_tokens.sql"),
    )
    .unwrap();
    let pool = qiria_store::db::connect(url, 1).await.unwrap();
    sqlx::migrate::Migrator::new(first.path()).await.unwrap().run(&pool).await.unwrap();
    for (id, name) in [("1", "Ada"), ("2", "ada")] {
        sqlx::query(
            "INSERT INTO users (id, username, roles, disabled, created_at, master_kid, data_key, password_hash) \
             VALUES ($1, $2, '[]', 0, 0, 'm', $3, $3)",
        )
        .bind(id)
        .bind(name)
        .bind(vec![0u8; 4])
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;
    let err = Store::open(url, keys).await.unwrap_err().to_string();
    assert!(err.contains("differ only by case") && err.contains("ada"), "{err}");
}

#[tokio::test]
async fn sqlite_refresh_families_under_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let keys = master_keys(&dir.path().join("master"));
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    concurrent_rotation(Store::open(&url, keys.clone()).await.unwrap()).await;
    case_duplicates_refused(&format!("sqlite://{}", dir.path().join("old.db").display()), keys).await;
}

#[tokio::test]
async fn postgres_refresh_families_under_concurrency() {
    if let (Some(url), Some(old)) =
        (qiria_test_support::postgres::fresh_database(), qiria_test_support::postgres::fresh_database())
    {
        let dir = tempfile::tempdir().unwrap();
        let keys = master_keys(dir.path());
        concurrent_rotation(Store::open(&url, keys.clone()).await.unwrap()).await;
        case_duplicates_refused(&old, keys).await;
    }
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
