//! The contract every backend must pass, one async function per trait, each on a fresh
//! store. A new backend runs the same functions on its own stores (see the tests at the end
//! for the SQLite and in-memory ones).

mod shared;
pub use shared::{dirs, outbox_pages, quota_claims};

use super::{
    BanEntry, BanStore, CutUploadStore, FailureScore, OutboxStore, PartMark, PartialRecord,
    PendingEntry, QuotaStore, State, TempNameStore, TempRecord, now_ms,
};
use crate::upload::partials::{load_hash, save_hash};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

/// A new pending entry `id` with `body`, its key `u/<id>.bin`.
pub(super) fn entry(id: &str, body: &str) -> PendingEntry {
    let mut fields = serde_json::Map::new();
    fields.insert("created".into(), serde_json::json!({"id": id}));
    PendingEntry {
        id: id.into(),
        key: format!("u/{id}.bin"),
        body: body.as_bytes().to_vec(),
        step: 0,
        fields,
        attempts: 0,
        since_ms: 0,
    }
}

/// The outbox: enqueue, due order, claim, step progress, retry schedule, the end states,
/// the operator's list/retry/purge.
pub async fn outbox(store: &dyn OutboxStore) {
    let before = now_ms();
    assert_eq!(store.next_due().await.expect("next_due"), None);
    assert_eq!(store.pending_summary().await.expect("summary"), (0, None));
    for id in ["a", "b", "c"] {
        store.insert(entry(id, "{}")).await.expect("insert");
    }
    // The same id again is ignored: the first body stays.
    store
        .insert(entry("a", "other"))
        .await
        .expect("insert twice");
    let (count, oldest) = store.pending_summary().await.expect("summary");
    assert_eq!(count, 3);
    assert!(oldest.is_some_and(|t| t >= before));
    assert_eq!(
        store.state_of("a").await.expect("state").as_deref(),
        Some("pending")
    );
    assert_eq!(store.state_of("nope").await.expect("state"), None);
    store.check_writable().await.expect("writable");

    // New entries are due at once; the soonest first, at most `limit`.
    let now = now_ms();
    store
        .reschedule("a", 1, now + 60_000, "503".into())
        .await
        .expect("reschedule");
    store
        .reschedule("b", 2, now - 10, "timeout".into())
        .await
        .expect("reschedule");
    assert_eq!(store.due(now, 10).await.expect("due"), vec!["c", "b"]);
    assert_eq!(store.due(now, 1).await.expect("due"), vec!["c"]);
    assert_eq!(store.next_due().await.expect("next_due"), Some(0));
    assert!(
        store.claim("a", now).await.expect("claim").is_none(),
        "not due yet"
    );
    let b = store
        .claim("b", now)
        .await
        .expect("claim")
        .expect("b is due");
    assert_eq!(
        (b.key.as_str(), b.body.as_slice()),
        ("u/b.bin", b"{}".as_slice())
    );
    assert_eq!((b.step, b.attempts), (0, 2));
    assert_eq!(b.fields["created"]["id"], "b");
    assert!(b.since_ms >= before);
    let a = store
        .claim("a", now + 60_000)
        .await
        .expect("claim")
        .expect("a due later");
    assert_eq!(a.body, b"{}", "the first insert's body");

    // A step that succeeded: the next step and the fields so far; attempts start again.
    let mut fields = b.fields.clone();
    fields.insert("asset".into(), "42".into());
    store.advance("b", 1, &fields).await.expect("advance");
    let b = store.claim("b", now).await.expect("claim").expect("b");
    assert_eq!((b.step, b.attempts), (1, 0));
    assert_eq!(b.fields["asset"], "42");

    // The end states: neither is due nor claimed again.
    store
        .finish("b", State::Delivered, 1, None)
        .await
        .expect("deliver");
    store
        .finish("c", State::Dead, 3, Some("400".into()))
        .await
        .expect("dead");
    assert!(store.claim("b", now).await.expect("claim").is_none());
    assert!(store.claim("c", now).await.expect("claim").is_none());
    assert_eq!(store.due(now + 120_000, 10).await.expect("due"), vec!["a"]);
    assert_eq!(
        store.state_of("b").await.expect("state").as_deref(),
        Some("delivered")
    );
    assert_eq!(store.pending_summary().await.expect("summary").0, 1);

    // The operator's view, oldest first (then by id), filtered by state.
    let all = store.list(None).await.expect("list");
    let ids: Vec<&str> = all.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, vec!["a", "b", "c"]);
    let dead = store.list(Some(State::Dead)).await.expect("list");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, "c");
    assert_eq!(dead[0].state, "dead");
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].last_error.as_deref(), Some("400"));
    let pending = store.list(Some(State::Pending)).await.expect("list");
    assert_eq!(pending[0].next_attempt_ms, now + 60_000);
    assert_eq!(pending[0].last_error.as_deref(), Some("503"));

    // Retry: a delivered entry stays delivered; a dead one is due at once, attempts reset.
    assert_eq!(store.retry(Some("b".into())).await.expect("retry"), 0);
    assert_eq!(store.retry(Some("c".into())).await.expect("retry"), 1);
    let c = store
        .claim("c", now_ms())
        .await
        .expect("claim")
        .expect("c pending again");
    assert_eq!(c.attempts, 0);
    store.finish("c", State::Dead, 1, None).await.expect("dead");
    store.finish("a", State::Dead, 1, None).await.expect("dead");
    assert_eq!(store.retry(None).await.expect("retry all dead"), 2);
    assert_eq!(store.pending_summary().await.expect("summary").0, 2);

    // Purge removes delivered entries last changed before the cut-off, nothing else.
    assert_eq!(store.purge_delivered(before - 1).await.expect("purge"), 0);
    assert_eq!(
        store
            .purge_delivered(now_ms() + 1_000)
            .await
            .expect("purge"),
        1
    );
    assert_eq!(store.state_of("b").await.expect("state"), None);
    assert_eq!(store.list(None).await.expect("list").len(), 2);
}

fn record(key: &str, user: &str, upload_id: &str) -> PartialRecord {
    let mut fields = serde_json::Map::new();
    fields.insert("asset".into(), "7".into());
    PartialRecord {
        key: key.into(),
        username: user.into(),
        path: format!("/{key}"),
        upload_id: upload_id.into(),
        content_type: "video/mp4".into(),
        id: format!("id-{key}"),
        fields,
        started_at_ms: 5,
        updated_ms: 0,
        durable_bytes: 0,
        durable_parts: 0,
        hash_state: None,
        active: true,
    }
}

/// `insert_batch`: each entry stored as `insert` stores it, existing ids left alone.
pub async fn outbox_batch(store: &dyn OutboxStore) {
    store.insert(entry("a", "first")).await.expect("insert");
    store
        .insert_batch((0..100).map(|i| entry(&format!("b{i:03}"), "{}")).collect())
        .await
        .expect("batch");
    store
        .insert_batch(vec![entry("a", "again"), entry("c", "{}")])
        .await
        .expect("batch with a known id");
    assert_eq!(store.pending_summary().await.expect("summary").0, 102);
    let a = store
        .claim("a", now_ms())
        .await
        .expect("claim")
        .expect("due");
    assert_eq!(a.body, b"first");
    let b = store
        .claim("b042", now_ms())
        .await
        .expect("claim")
        .expect("due");
    assert_eq!((b.step, b.attempts), (0, 0));
    assert_eq!(
        b.fields.get("created"),
        Some(&serde_json::json!({"id": "b042"}))
    );
    store.insert_batch(Vec::new()).await.expect("empty batch");
}

/// Cut uploads: begin, part marks, suspend with the hash state, claim for a resume,
/// listings per user and directory, expiry, removal.
pub async fn cut_uploads(store: &dyn CutUploadStore) {
    assert!(store.get("a/x.mp4".into()).await.expect("get").is_none());
    store
        .begin(record("a/x.mp4", "alice", "up-1"))
        .await
        .expect("begin");
    let running = store
        .get("a/x.mp4".into())
        .await
        .expect("get")
        .expect("record");
    assert!(running.active);
    // Its writer is this store: not an orphan, not adoptable.
    assert!(store.orphaned().await.expect("orphaned").is_empty());
    assert!(
        !store
            .adopt("a/x.mp4".into(), "up-1".into())
            .await
            .expect("adopt")
    );
    // The sweep lease: taken, then renewed by its holder.
    for _ in 0..2 {
        assert!(
            store
                .lead_sweep(Duration::from_secs(5))
                .await
                .expect("lead_sweep")
        );
    }
    assert_eq!((running.durable_bytes, running.durable_parts), (0, 0));
    assert_eq!(running.hash_state, None);
    assert_eq!(running.fields["asset"], "7");
    assert_eq!(
        (running.content_type.as_str(), running.id.as_str()),
        ("video/mp4", "id-a/x.mp4")
    );
    assert_eq!(running.started_at_ms, 5);

    // Marks come back by number, whatever the order they were written in; a part sent
    // again replaces its mark.
    let mut hasher = Sha256::new();
    let mut states = Vec::new();
    for chunk in [b"first part ".as_slice(), b"second part ", b"third"] {
        hasher.update(chunk);
        states.push(save_hash(&hasher));
    }
    for (number, end) in [(2u32, 20u64), (1, 10), (3, 30), (2, 22)] {
        let mark = PartMark {
            number,
            end,
            hash_state: states[number as usize - 1].clone(),
        };
        store.mark("up-1".into(), mark).await.expect("mark");
    }
    let marks = store.marks("up-1".into()).await.expect("marks");
    let ends: Vec<(u32, u64)> = marks.iter().map(|m| (m.number, m.end)).collect();
    assert_eq!(ends, vec![(1, 10), (2, 22), (3, 30)]);
    assert!(
        store.may_write("up-1"),
        "the store that began it may write it"
    );

    // Suspended with two whole parts: the marks after them go, the hash state round-trips
    // and continues to the same digest.
    let kept = marks[1].hash_state.clone();
    assert!(
        store
            .suspend("a/x.mp4".into(), "up-1".into(), 22, 2, kept.clone())
            .await
            .expect("suspend")
    );
    assert_eq!(store.marks("up-1".into()).await.expect("marks").len(), 2);
    let cut = store
        .get("a/x.mp4".into())
        .await
        .expect("get")
        .expect("record");
    assert!(!cut.active);
    assert_eq!((cut.durable_bytes, cut.durable_parts), (22, 2));
    assert!(cut.updated_ms >= running.updated_ms);
    let mut resumed = load_hash(cut.hash_state.as_deref().expect("hash state")).expect("loads");
    resumed.update(b"third");
    assert_eq!(resumed.finalize(), hasher.finalize());
    // Another upload of the key is not this record's.
    assert!(
        !store
            .suspend("a/x.mp4".into(), "other".into(), 1, 1, vec![])
            .await
            .expect("suspend")
    );

    // Listings: the user's cut uploads directly under the directory.
    for (key, user, id) in [("a/sub/y.mp4", "alice", "up-2"), ("a/z.mp4", "bob", "up-3")] {
        store.begin(record(key, user, id)).await.expect("begin");
        store
            .suspend(key.into(), id.into(), 5, 1, vec![1])
            .await
            .expect("suspend");
    }
    store
        .begin(record("a/w.mp4", "alice", "up-4"))
        .await
        .expect("begin running");
    let listed = store
        .cut_under("a/".into(), "alice".into())
        .await
        .expect("cut_under");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, "a/x.mp4");
    assert_eq!(store.count_cut().await.expect("count"), 3);
    assert_eq!(store.all().await.expect("all").len(), 4);

    // A resuming session claims a cut upload once.
    assert!(
        store
            .activate("a/x.mp4".into(), "up-1".into())
            .await
            .expect("activate")
    );
    assert!(
        !store
            .activate("a/x.mp4".into(), "up-1".into())
            .await
            .expect("activate")
    );
    assert!(
        !store
            .activate("a/w.mp4".into(), "up-4".into())
            .await
            .expect("running")
    );
    assert_eq!(store.count_cut().await.expect("count"), 2);
    assert!(store.orphaned().await.expect("orphaned").is_empty());

    // Expiry: cut uploads untouched since before the cut-off.
    assert!(store.expired(0).await.expect("expired").is_empty());
    let mut expired: Vec<String> = store
        .expired(now_ms() + 1_000)
        .await
        .expect("expired")
        .into_iter()
        .map(|r| r.key)
        .collect();
    expired.sort();
    assert_eq!(expired, vec!["a/sub/y.mp4", "a/z.mp4"]);

    // A new upload of a key replaces the old record.
    store
        .begin(record("a/z.mp4", "bob", "up-5"))
        .await
        .expect("begin again");
    let z = store
        .get("a/z.mp4".into())
        .await
        .expect("get")
        .expect("record");
    assert_eq!(z.upload_id, "up-5");
    assert!(z.active && z.durable_bytes == 0);

    // Removal forgets the record and its marks; another upload id removes nothing.
    store
        .remove("a/x.mp4".into(), "nope".into())
        .await
        .expect("remove");
    assert!(store.get("a/x.mp4".into()).await.expect("get").is_some());
    store
        .remove("a/x.mp4".into(), "up-1".into())
        .await
        .expect("remove");
    assert!(store.get("a/x.mp4".into()).await.expect("get").is_none());
    assert!(store.marks("up-1".into()).await.expect("marks").is_empty());
}

fn temp(key: &str, size: u64) -> TempRecord {
    let mut fields = serde_json::Map::new();
    fields.insert("asset".into(), "9".into());
    TempRecord {
        key: key.into(),
        username: "alice".into(),
        size,
        sha256: "ab".repeat(32),
        content_type: "image/png".into(),
        id: format!("id-{key}"),
        fields,
        started_at_ms: 3,
    }
}

/// Temporary names: record, look up, replace, remove, prune.
pub async fn temp_names(store: &dyn TempNameStore) {
    assert!(store.temp("u/a.tmp".into()).await.expect("temp").is_none());
    store.put_temp(temp("u/a.tmp", 10)).await.expect("put");
    let got = store
        .temp("u/a.tmp".into())
        .await
        .expect("temp")
        .expect("record");
    assert_eq!((got.username.as_str(), got.size), ("alice", 10));
    assert_eq!(got.sha256, "ab".repeat(32));
    assert_eq!(
        (got.content_type.as_str(), got.id.as_str()),
        ("image/png", "id-u/a.tmp")
    );
    assert_eq!(got.fields["asset"], "9");
    assert_eq!(got.started_at_ms, 3);
    store.put_temp(temp("u/a.tmp", 11)).await.expect("replace");
    assert_eq!(
        store
            .temp("u/a.tmp".into())
            .await
            .expect("temp")
            .expect("record")
            .size,
        11
    );
    store.put_temp(temp("u/b.tmp", 1)).await.expect("put");
    store.remove_temp("u/a.tmp".into()).await.expect("remove");
    assert!(store.temp("u/a.tmp".into()).await.expect("temp").is_none());
    store
        .remove_temp("u/a.tmp".into())
        .await
        .expect("removing twice is fine");
    assert_eq!(store.prune_temp(0).await.expect("prune"), 0);
    assert_eq!(store.prune_temp(now_ms() + 1_000).await.expect("prune"), 1);
    assert!(store.temp("u/b.tmp".into()).await.expect("temp").is_none());
}

/// Quota usage: unknown until counted; changes add up and never go below zero.
pub async fn quota(store: &dyn QuotaStore) {
    assert_eq!(store.quota_usage("alice".into()).await.expect("read"), None);
    store
        .add_quota_usage("alice".into(), 5, 1)
        .await
        .expect("add");
    assert_eq!(
        store.quota_usage("alice".into()).await.expect("read"),
        None,
        "not counted yet"
    );
    store
        .set_quota_usage("alice".into(), 100, 4)
        .await
        .expect("set");
    store
        .set_quota_usage("bob".into(), 1, 1)
        .await
        .expect("set");
    store
        .add_quota_usage("alice".into(), 50, 1)
        .await
        .expect("add");
    store
        .add_quota_usage("alice".into(), -30, -2)
        .await
        .expect("subtract");
    assert_eq!(
        store.quota_usage("alice".into()).await.expect("read"),
        Some((120, 3))
    );
    store
        .add_quota_usage("alice".into(), -1_000, -10)
        .await
        .expect("subtract");
    assert_eq!(
        store.quota_usage("alice".into()).await.expect("read"),
        Some((0, 0))
    );
    store
        .set_quota_usage("alice".into(), 7, 2)
        .await
        .expect("recount");
    assert_eq!(
        store.quota_usage("alice".into()).await.expect("read"),
        Some((7, 2))
    );
    store
        .forget_quota_usage("alice".into())
        .await
        .expect("forget");
    assert_eq!(store.quota_usage("alice".into()).await.expect("read"), None);
    assert_eq!(
        store.quota_usage("bob".into()).await.expect("read"),
        Some((1, 1))
    );
}

/// Bans: failures counted within the window, ban and its expiry, unban, the count.
pub fn bans(store: &dyn BanStore) {
    let ip: IpAddr = "198.51.100.7".parse().expect("ip");
    let other: IpAddr = "2001:db8::1".parse().expect("ip");
    let window = Duration::from_secs(60);
    let t0 = SystemTime::now();
    let at = |secs: u64| t0 + Duration::from_secs(secs);
    assert_eq!(store.banned_until(ip, t0), None);
    assert_eq!(store.banned_count(t0), 0);
    let score = |failures, bans| Some(FailureScore { failures, bans });
    assert_eq!(store.add_failure(ip, at(0), window), score(1, 0));
    assert_eq!(store.add_failure(ip, at(10), window), score(2, 0));
    assert_eq!(store.add_failure(other, at(10), window), score(1, 0));
    // Failures older than the window no longer count.
    assert_eq!(store.add_failure(ip, at(65), window), score(2, 0));
    assert_eq!(store.add_failure(ip, at(200), window), score(1, 0));

    // A ban clears the failures, stops counting them, and ends on its own.
    assert_eq!(store.ban(ip, at(200), at(300)), Some(1));
    assert_eq!(store.banned_until(ip, at(250)), Some(at(300)));
    assert_eq!(store.ban(ip, at(250), at(400)), None, "already banned");
    assert_eq!(store.add_failure(ip, at(250), window), None);
    assert_eq!(store.banned_count(at(250)), 1);
    // Listed by address: the banned one, and one with failures counted.
    let entry = |ip, banned_until, failures, bans| BanEntry {
        ip,
        banned_until,
        failures,
        bans,
    };
    assert_eq!(
        store.list(at(250)),
        vec![entry(ip, Some(at(300)), 0, 1), entry(other, None, 1, 0)]
    );
    assert_eq!(store.banned_until(ip, at(300)), None, "over at its end");
    assert_eq!(store.banned_count(at(300)), 0);
    assert_eq!(store.add_failure(ip, at(310), window), score(1, 1));

    // Bans add up; lifting one keeps the count.
    assert_eq!(store.ban(ip, at(310), at(1_000)), Some(2));
    assert_eq!(store.ban(other, at(310), at(1_000)), Some(1));
    assert_eq!(store.banned_count(at(320)), 2);
    store.unban(ip);
    assert_eq!(store.banned_until(ip, at(320)), None);
    assert_eq!(store.banned_count(at(320)), 1);
    assert_eq!(
        store.list(at(320)),
        vec![entry(other, Some(at(1_000)), 0, 1)]
    );
    assert_eq!(store.add_failure(ip, at(330), window), score(1, 2));
    // Lifting an address nobody banned changes nothing and lists nothing.
    store.unban("203.0.113.1".parse().expect("ip"));
    assert_eq!(
        store.list(at(330)),
        vec![entry(ip, None, 1, 2), entry(other, Some(at(1_000)), 0, 1)]
    );
    assert!(
        store
            .list(at(1_000))
            .iter()
            .all(|e| e.banned_until.is_none())
    );
}

#[cfg(test)]
mod tests {
    use crate::state::memory::MemoryBans;
    use crate::state::sqlite;

    fn stores() -> (tempfile::TempDir, crate::state::Stores) {
        let dir = tempfile::tempdir().expect("tempdir");
        let stores = sqlite::open(dir.path(), true).expect("open");
        (dir, stores)
    }

    #[tokio::test]
    async fn sqlite_outbox() {
        let (_dir, stores) = stores();
        super::outbox(stores.outbox.as_deref().expect("outbox")).await;
    }

    #[tokio::test]
    async fn sqlite_outbox_batch() {
        let (_dir, stores) = stores();
        super::outbox_batch(stores.outbox.as_deref().expect("outbox")).await;
    }

    #[tokio::test]
    async fn sqlite_outbox_pages() {
        let (_dir, stores) = stores();
        super::outbox_pages(stores.outbox.as_deref().expect("outbox")).await;
    }

    #[tokio::test]
    async fn sqlite_cut_uploads() {
        let (_dir, stores) = stores();
        super::cut_uploads(stores.uploads.as_ref()).await;
    }

    #[tokio::test]
    async fn sqlite_temp_names() {
        let (_dir, stores) = stores();
        super::temp_names(stores.temp_names.as_ref()).await;
    }

    #[tokio::test]
    async fn sqlite_quota() {
        let (_dir, stores) = stores();
        super::quota(stores.quota.as_ref()).await;
        super::quota_claims(stores.quota.as_ref()).await;
    }

    #[tokio::test]
    async fn sqlite_dirs() {
        let (_dir, stores) = stores();
        super::dirs(stores.dirs.as_ref()).await;
    }

    #[test]
    fn memory_bans() {
        super::bans(&MemoryBans::new());
    }
}
