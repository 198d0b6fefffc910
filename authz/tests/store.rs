//! The issuer's store behaves the same on embedded SQLite and on a real PostgreSQL server.

use authz::store::{Store, StoreError, User};

fn user(name: &str) -> User {
    User {
        id: format!("id-{name}"),
        username: name.into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".into(),
        roles: vec!["User".into()],
        disabled: false,
    }
}

async fn exercise(store: Store) {
    store.add_user(&user("ada")).await.unwrap();
    assert!(matches!(store.add_user(&user("ada")).await, Err(StoreError::Duplicate(_))));
    assert_eq!(store.user_by_name("ada").await.unwrap(), Some(user("ada")));
    assert_eq!(store.user_by_id("id-ada").await.unwrap().unwrap().username, "ada");
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
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    exercise(Store::open(&url).await.unwrap()).await;
    // Reopening an existing file applies no migration twice.
    Store::open(&url).await.unwrap();
}

#[tokio::test]
async fn postgres_store() {
    if let Some(url) = qiria_test_support::postgres::fresh_database() {
        exercise(Store::open(&url).await.unwrap()).await;
        Store::open(&url).await.unwrap();
    }
}
