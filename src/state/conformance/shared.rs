//! The contract of quota reservations, made directories and the operator's outbox pages:
//! what replicas share beyond the records of uploads (kept apart from the rest of the suite
//! to keep files short).

use crate::state::{
    DirStore, OutboxStore, QuotaClaim, QuotaGrant, QuotaStore, QuotaTotals, State, StateCounts,
    now_ms,
};

fn claim(id: &str, bytes: u64, files: u64, limit_bytes: u64, limit_files: u64) -> QuotaClaim {
    let now = now_ms();
    QuotaClaim {
        username: "alice".into(),
        id: id.into(),
        owner: "replica-a".into(),
        bytes,
        files,
        limit_bytes: Some(limit_bytes),
        limit_files: Some(limit_files),
        expires_ms: now + 60_000,
        now_ms: now,
    }
}

/// Reservations: refused past a limit counting stored and every live reservation, grown and
/// renewed by id, settled into usage in one step or given back, worthless once expired.
pub async fn quota_claims(store: &dyn QuotaStore) {
    assert_eq!(
        store
            .claim_quota(claim("u1", 1, 1, 100, 5))
            .await
            .expect("claim"),
        QuotaGrant::Uncounted,
        "nothing to check against before the user is counted"
    );
    store
        .set_quota_usage("alice".into(), 50, 2)
        .await
        .expect("count");
    let granted = |bytes, files| QuotaGrant::Granted { bytes, files };
    assert_eq!(
        store
            .claim_quota(claim("u1", 30, 1, 100, 5))
            .await
            .expect("claim"),
        granted(30, 1)
    );
    assert_eq!(
        store
            .claim_quota(claim("u1", 10, 0, 100, 5))
            .await
            .expect("grow"),
        granted(40, 1)
    );
    // 50 stored + 40 held: another 11 would pass 100.
    assert_eq!(
        store
            .claim_quota(claim("u2", 11, 1, 100, 5))
            .await
            .expect("claim"),
        QuotaGrant::Refused(QuotaTotals {
            bytes: 50,
            files: 2,
            reserved_bytes: 40,
            reserved_files: 1,
        })
    );
    assert_eq!(
        store
            .claim_quota(claim("u2", 10, 1, 100, 5))
            .await
            .expect("claim"),
        granted(10, 1),
        "exactly at the limit"
    );
    // 2 stored + 2 held: a third file passes 4; a claim of nothing renews and always passes.
    assert!(matches!(
        store
            .claim_quota(claim("u3", 0, 1, 1_000, 4))
            .await
            .expect("claim"),
        QuotaGrant::Refused(_)
    ));
    assert_eq!(
        store
            .claim_quota(claim("u1", 0, 0, 1, 1))
            .await
            .expect("renew"),
        granted(40, 1)
    );

    // Commit: the reservation becomes usage; abort: it is given back.
    store
        .settle_quota("alice".into(), "u1".into(), 35, 1)
        .await
        .expect("commit");
    store
        .settle_quota("alice".into(), "u2".into(), 0, 0)
        .await
        .expect("abort");
    store
        .settle_quota("alice".into(), "u2".into(), 0, 0)
        .await
        .expect("settling twice is fine");
    assert_eq!(
        store.quota_usage("alice".into()).await.expect("usage"),
        Some((85, 3))
    );
    assert_eq!(
        store
            .claim_quota(claim("u4", 15, 1, 100, 4))
            .await
            .expect("claim"),
        granted(15, 1),
        "everything held before was given back"
    );

    store
        .settle_quota("alice".into(), "u4".into(), 0, 0)
        .await
        .expect("abort");

    // An expired lease counts for nothing, and a claim on it starts over.
    let mut stale = claim("u5", 10, 0, 100, 10);
    stale.limit_bytes = None;
    stale.expires_ms = now_ms() - 1;
    assert_eq!(
        store.claim_quota(stale).await.expect("claim"),
        granted(10, 0)
    );
    assert_eq!(
        store
            .claim_quota(claim("u6", 15, 0, 100, 5))
            .await
            .expect("claim"),
        granted(15, 0),
        "85 stored + 15: u5's 10 count for nothing"
    );
    assert_eq!(
        store
            .claim_quota(claim("u5", 0, 0, 100, 5))
            .await
            .expect("renew"),
        granted(0, 0),
        "the expired hold is gone"
    );
    let mut old = claim("u7", 0, 0, 100, 5);
    old.expires_ms = now_ms() - 10_000;
    old.bytes = 0;
    old.files = 0;
    store.claim_quota(old).await.expect("renewal of nothing");
    assert_eq!(
        store
            .expire_quota_claims(now_ms() - 5_000)
            .await
            .expect("expire"),
        1
    );
}

/// Made directories: added once, found, listed under their parent in name order, removed
/// with everything under them.
pub async fn dirs(store: &dyn DirStore) {
    assert!(!store.has_dir("alice/a/".into()).await.expect("has"));
    for prefix in [
        "alice/b/",
        "alice/a/",
        "alice/a/x/",
        "alice/a/x/y/",
        "bob/a/",
    ] {
        store.add_dir(prefix.into()).await.expect("add");
    }
    store
        .add_dir("alice/a/".into())
        .await
        .expect("adding twice is fine");
    assert!(store.has_dir("alice/a/x/".into()).await.expect("has"));
    assert_eq!(
        store.dirs_in("alice/".into()).await.expect("list"),
        vec!["a".to_string(), "b".to_string()]
    );
    assert_eq!(
        store.dirs_in("alice/a/".into()).await.expect("list"),
        vec!["x".to_string()]
    );
    assert!(
        store
            .dirs_in("alice/b/".into())
            .await
            .expect("list")
            .is_empty()
    );
    assert!(store.remove_dirs("alice/a/".into()).await.expect("remove"));
    assert!(!store.has_dir("alice/a/x/y/".into()).await.expect("has"));
    assert!(
        !store.remove_dirs("alice/a/".into()).await.expect("remove"),
        "gone already"
    );
    assert_eq!(
        store.dirs_in("alice/".into()).await.expect("list"),
        vec!["b".to_string()]
    );
    assert!(
        store.has_dir("bob/a/".into()).await.expect("has"),
        "other homes stay"
    );
}

/// The admin API's view of the outbox: counts per state, and pages of one state — pending
/// and dead oldest first, the last changes first on request, at most `limit`.
pub async fn outbox_pages(store: &dyn OutboxStore) {
    assert_eq!(
        store.counts().await.expect("counts"),
        StateCounts::default()
    );
    for i in 0..5 {
        store
            .insert(super::entry(&format!("e{i}"), "{}"))
            .await
            .expect("insert");
        // Creation times apart, so "oldest first" has one answer.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    store
        .finish("e1", State::Dead, 1, Some("HTTP 400".into()))
        .await
        .expect("dead");
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    store
        .finish("e3", State::Delivered, 1, None)
        .await
        .expect("delivered");
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    store
        .finish("e0", State::Delivered, 1, None)
        .await
        .expect("delivered");
    assert_eq!(
        store.counts().await.expect("counts"),
        StateCounts {
            pending: 2,
            dead: 1,
            delivered: 2
        }
    );
    let ids = |page: Vec<crate::state::EntrySummary>| -> Vec<String> {
        page.into_iter().map(|e| e.id).collect()
    };
    let pending = store
        .page(Some(State::Pending), 10, false)
        .await
        .expect("page");
    assert_eq!(ids(pending), ["e2", "e4"]);
    let dead = store
        .page(Some(State::Dead), 10, false)
        .await
        .expect("page");
    assert_eq!(dead[0].last_error.as_deref(), Some("HTTP 400"));
    let delivered = store
        .page(Some(State::Delivered), 10, true)
        .await
        .expect("page");
    assert_eq!(
        ids(delivered.clone()),
        ["e0", "e3"],
        "the last delivery first"
    );
    assert!(delivered[0].updated_ms >= delivered[1].updated_ms);
    let one = store
        .page(Some(State::Delivered), 1, true)
        .await
        .expect("page");
    assert_eq!(ids(one), ["e0"]);
    let all = store.page(None, 3, false).await.expect("page");
    assert_eq!(ids(all), ["e0", "e1", "e2"], "every state, oldest first");
}
