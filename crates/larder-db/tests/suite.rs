//! One suite, three backends: every check below runs on a SQLite file, SQLite in memory and a
//! fresh PostgreSQL database (a real server, see larder-testkit), each test on its own database.

use std::collections::HashSet;

use larder_db::{
    Db, DbError, DbUrl, Evaluation, FeedbackEvent, FeedbackKind, ItemStatus, NewItem, RankInput,
};
use larder_testkit::PostgresDb;
use tempfile::TempDir;
use tokio::task::JoinSet;

#[derive(Clone, Copy, Debug)]
enum Backend {
    SqliteFile,
    SqliteMemory,
    Postgres,
}

/// A connected database plus whatever must outlive it (temp dir, PostgreSQL database).
struct Harness {
    db: Db,
    url: DbUrl,
    // Dropped after `db` (field order): the pool goes before its file or database.
    _dir: Option<TempDir>,
    _pg: Option<PostgresDb>,
}

async fn open(backend: Backend) -> Harness {
    let (url, dir, pg) = match backend {
        Backend::SqliteFile => {
            let dir = tempfile::tempdir().expect("tempdir");
            let url = format!("sqlite://{}", dir.path().join("data/larder.db").display());
            (url, Some(dir), None)
        }
        Backend::SqliteMemory => ("sqlite::memory:".to_owned(), None, None),
        Backend::Postgres => {
            let pg = PostgresDb::start();
            (pg.url(), None, Some(pg))
        }
    };
    let url: DbUrl = url.parse().expect("db url");
    let db = Db::connect(&url).await.expect("connect");
    Harness {
        db,
        url,
        _dir: dir,
        _pg: pg,
    }
}

const CAT: &str = "이사 준비";

fn new_item(id: &str, category: &str, text: &str, status: ItemStatus) -> NewItem {
    NewItem {
        id: id.to_owned(),
        category: category.to_owned(),
        text: text.to_owned(),
        norm: text.to_lowercase(),
        provider: "openai".to_owned(),
        model: "gpt-4o-mini".to_owned(),
        created_at_ms: 1_700_000_000_000,
        status,
        reason: (status == ItemStatus::Rejected).then(|| "duplicate".to_owned()),
    }
}

fn eval(item: &str, evaluator: &str, score: f64) -> Evaluation {
    Evaluation {
        item_id: item.to_owned(),
        evaluator: evaluator.to_owned(),
        model: "judge-1".to_owned(),
        score,
        reason: Some(format!("{evaluator} thinks {score}")),
        created_at_ms: 1_700_000_000_500,
    }
}

fn event(item: &str, kind: FeedbackKind, position: u32, weight: f64) -> FeedbackEvent {
    FeedbackEvent {
        item_id: item.to_owned(),
        kind,
        position,
        weight,
        at_ms: 1_700_000_001_000,
    }
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

async fn seed(db: &Db, items: &[(&str, ItemStatus)]) {
    db.register_category(CAT, None, Some("ko"), 1)
        .await
        .expect("register");
    let items: Vec<NewItem> = items
        .iter()
        .map(|(id, status)| new_item(id, CAT, &format!("text of {id}"), *status))
        .collect();
    db.insert_items(&items).await.expect("insert");
}

fn rank_of<'a>(inputs: &'a [RankInput], id: &str) -> &'a RankInput {
    inputs
        .iter()
        .find(|r| r.id == id)
        .unwrap_or_else(|| panic!("{id} missing from rank inputs {inputs:?}"))
}

async fn basics(backend: Backend) {
    let h = open(backend).await;
    h.db.ping().await.expect("ping");
    let expected = match backend {
        Backend::Postgres => "postgres",
        _ => "sqlite",
    };
    assert_eq!(h.db.kind(), expected);
    // Connecting again to an existing schema is fine (memory: a new, empty database).
    let again = Db::connect(&h.url).await.expect("reconnect");
    again.ping().await.expect("ping again");
}

async fn categories_with_korean_names_and_counts(backend: Backend) {
    let h = open(backend).await;
    let db = &h.db;
    assert!(db
        .register_category(CAT, Some("moving checklist"), Some("ko"), 100)
        .await
        .expect("register"));
    assert!(!db
        .register_category(CAT, None, None, 200)
        .await
        .expect("again"));
    let cat = db.category(CAT).await.expect("get").expect("exists");
    assert_eq!(cat.name, CAT);
    assert_eq!(cat.description.as_deref(), Some("moving checklist"));
    assert_eq!(cat.locale.as_deref(), Some("ko"));
    assert_eq!(cat.created_at_ms, 100, "re-registering keeps created_at");
    assert_eq!(cat.last_generation_ms, None);

    // Some(...) overwrites, None keeps.
    assert!(!db
        .register_category(CAT, Some("이사 체크리스트"), None, 300)
        .await
        .expect("update"));
    let cat = db.category(CAT).await.expect("get").expect("exists");
    assert_eq!(cat.description.as_deref(), Some("이사 체크리스트"));
    assert_eq!(cat.locale.as_deref(), Some("ko"));

    let long = "가".repeat(100);
    assert!(db
        .register_category(&long, None, None, 1)
        .await
        .expect("long"));
    assert!(db
        .register_category("Zeta", None, None, 1)
        .await
        .expect("Zeta"));
    assert!(db
        .register_category("abc", None, None, 1)
        .await
        .expect("abc"));
    assert_eq!(db.category("nope").await.expect("get"), None);

    db.insert_items(&[
        new_item("a1", CAT, "one", ItemStatus::Active),
        new_item("a2", CAT, "two", ItemStatus::Active),
        new_item("a3", CAT, "three", ItemStatus::Active),
        new_item("p1", CAT, "four", ItemStatus::Pending),
        new_item("r1", CAT, "five", ItemStatus::Rejected),
        new_item("z1", "Zeta", "six", ItemStatus::Pending),
    ])
    .await
    .expect("insert");
    db.put_evaluations(&[
        eval("a1", "openai", 7.0),
        eval("a1", "clova", 5.0),
        eval("r1", "openai", 1.0),
    ])
    .await
    .expect("evaluate");

    let list = db.categories().await.expect("list");
    let names: Vec<&str> = list.iter().map(|c| c.name.as_str()).collect();
    // Code-point order on every backend: ASCII upper < lower < Hangul.
    assert_eq!(names, vec!["Zeta", "abc", long.as_str(), CAT]);
    let moving = &list[3];
    assert_eq!(moving.pool_size, 3, "active items only");
    assert_eq!(moving.evaluated, 2, "a1 and r1 have evaluations");
    assert_eq!(moving.locale.as_deref(), Some("ko"));
    assert_eq!(moving.description.as_deref(), Some("이사 체크리스트"));
    assert_eq!(
        (list[0].pool_size, list[0].evaluated),
        (0, 0),
        "Zeta: pending only"
    );
    assert_eq!((list[1].pool_size, list[1].evaluated), (0, 0), "abc: empty");
}

async fn insert_items_is_idempotent(backend: Backend) {
    let h = open(backend).await;
    let db = &h.db;
    db.register_category(CAT, None, None, 1)
        .await
        .expect("register");
    let a = new_item("0a", CAT, "짐 싸기 📦", ItemStatus::Active);
    let b = new_item("0b", CAT, "주소 변경", ItemStatus::Pending);
    let c = new_item("0c", CAT, "청소", ItemStatus::Pending);
    assert_eq!(
        db.insert_items(&[a.clone(), b.clone()])
            .await
            .expect("first"),
        ids(&["0a", "0b"])
    );
    assert_eq!(
        db.insert_items(&[a.clone(), b.clone()])
            .await
            .expect("second"),
        Vec::<String>::new()
    );
    assert_eq!(
        db.insert_items(&[a.clone(), c.clone()])
            .await
            .expect("third"),
        ids(&["0c"])
    );
    // The same id twice in one batch is inserted once and reported once.
    let d = new_item("0d", CAT, "d", ItemStatus::Pending);
    assert_eq!(
        db.insert_items(&[d.clone(), d.clone()])
            .await
            .expect("dup in batch"),
        ids(&["0d"])
    );
    assert_eq!(
        db.insert_items(&[]).await.expect("empty"),
        Vec::<String>::new()
    );

    let mut got = db
        .items(&ids(&["0a", "0b", "0c", "0d", "ffff"]))
        .await
        .expect("items");
    got.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(got.len(), 4, "unknown ids are skipped");
    let first = &got[0];
    assert_eq!(first.text, "짐 싸기 📦");
    assert_eq!(first.category, CAT);
    assert_eq!(first.status, ItemStatus::Active);
    assert_eq!(
        (first.provider.as_str(), first.model.as_str()),
        ("openai", "gpt-4o-mini")
    );
    assert_eq!(first.created_at_ms, 1_700_000_000_000);
    assert_eq!((first.impressions, first.selections), (0, 0));
    assert_eq!(first.weighted_impressions, 0.0);

    // More than one statement's worth of rows: all inserted, reported in input order.
    let many: Vec<NewItem> = (0..1_200)
        .map(|n| {
            new_item(
                &format!("{n:08x}"),
                CAT,
                &format!("bulk {n}"),
                ItemStatus::Pending,
            )
        })
        .collect();
    let inserted = db.insert_items(&many).await.expect("bulk");
    let want: Vec<String> = many.iter().map(|i| i.id.clone()).collect();
    assert_eq!(inserted, want);
    assert_eq!(db.items(&want).await.expect("bulk read").len(), 1_200);
}

async fn pool_norms_exclude_rejected(backend: Backend) {
    let h = open(backend).await;
    let db = &h.db;
    seed(
        db,
        &[
            ("a", ItemStatus::Active),
            ("p", ItemStatus::Pending),
            ("r", ItemStatus::Rejected),
        ],
    )
    .await;
    db.insert_items(&[new_item("o", "other", "x", ItemStatus::Active)])
        .await
        .expect("other");
    let mut norms = db.pool_norms(CAT).await.expect("norms");
    norms.sort();
    assert_eq!(
        norms,
        vec![
            ("a".to_owned(), "text of a".to_owned()),
            ("p".to_owned(), "text of p".to_owned())
        ]
    );

    // Only rows of the named category change.
    assert_eq!(
        db.set_status("other", &ids(&["a", "p"]), ItemStatus::Rejected, Some("x"))
            .await
            .expect("wrong category"),
        0
    );
    assert_eq!(
        db.set_status(
            CAT,
            &ids(&["p", "o", "missing"]),
            ItemStatus::Rejected,
            Some("too similar")
        )
        .await
        .expect("reject"),
        1
    );
    assert_eq!(
        db.pool_norms(CAT).await.expect("norms"),
        vec![("a".to_owned(), "text of a".to_owned())]
    );
    let p = db.item(CAT, "p").await.expect("item").expect("exists").item;
    assert_eq!(p.status, ItemStatus::Rejected);
    assert_eq!(p.reason.as_deref(), Some("too similar"));
    assert_eq!(
        db.item("other", "p").await.expect("item"),
        None,
        "wrong category"
    );

    // Activating clears the reason.
    assert_eq!(
        db.set_status(CAT, &ids(&["p"]), ItemStatus::Active, None)
            .await
            .expect("activate"),
        1
    );
    let p = db.item(CAT, "p").await.expect("item").expect("exists").item;
    assert_eq!((p.status, p.reason), (ItemStatus::Active, None));
}

async fn evaluations_upsert_and_mean(backend: Backend) {
    let h = open(backend).await;
    let db = &h.db;
    seed(
        db,
        &[
            ("a", ItemStatus::Active),
            ("b", ItemStatus::Pending),
            ("c", ItemStatus::Active),
        ],
    )
    .await;
    db.put_evaluations(&[eval("a", "openai", 6.0), eval("a", "clova", 8.0)])
        .await
        .expect("evaluate");
    let ranks = db.rank_inputs(CAT).await.expect("rank");
    assert_eq!(rank_of(&ranks, "a").eval_mean, Some(7.0));
    assert_eq!(rank_of(&ranks, "a").eval_count, 2);
    assert_eq!(rank_of(&ranks, "c").eval_mean, None);
    assert_eq!(rank_of(&ranks, "c").eval_count, 0);

    // Re-evaluating replaces; a batch naming the same pair twice keeps the last.
    db.put_evaluations(&[
        eval("a", "openai", 10.0),
        eval("b", "openai", 1.0),
        eval("b", "openai", 3.0),
    ])
    .await
    .expect("re-evaluate");
    let ranks = db.rank_inputs(CAT).await.expect("rank");
    assert_eq!(rank_of(&ranks, "a").eval_mean, Some(9.0));
    assert_eq!(rank_of(&ranks, "a").eval_count, 2);
    assert_eq!(rank_of(&ranks, "b").eval_mean, Some(3.0));
    assert_eq!(rank_of(&ranks, "b").eval_count, 1);

    let detail = db.item(CAT, "a").await.expect("item").expect("exists");
    let mut evals = detail.evaluations.clone();
    evals.sort_by(|x, y| x.evaluator.cmp(&y.evaluator));
    assert_eq!(
        evals,
        vec![eval("a", "clova", 8.0), eval("a", "openai", 10.0)]
    );

    // A NaN score is refused before anything is written.
    let err = db
        .put_evaluations(&[eval("c", "openai", 5.0), eval("c", "clova", f64::NAN)])
        .await
        .expect_err("nan");
    assert!(matches!(err, DbError::Query(_)), "{err:?}");
    assert_eq!(
        rank_of(&db.rank_inputs(CAT).await.expect("rank"), "c").eval_count,
        0
    );

    // An evaluation must name a real item.
    let err = db
        .put_evaluations(&[eval("ghost", "openai", 5.0)])
        .await
        .expect_err("unknown item");
    assert!(matches!(err, DbError::Query(_)), "{err:?}");
}

async fn rank_inputs_count_feedback(backend: Backend) {
    let h = open(backend).await;
    let db = &h.db;
    seed(
        db,
        &[
            ("a", ItemStatus::Active),
            ("b", ItemStatus::Active),
            ("c", ItemStatus::Pending),
            ("r", ItemStatus::Rejected),
        ],
    )
    .await;
    db.put_evaluations(&[eval("a", "openai", 4.0)])
        .await
        .expect("evaluate");
    let recorded = db
        .record_feedback(
            CAT,
            &[
                event("a", FeedbackKind::Impression, 0, 1.0),
                event("a", FeedbackKind::Impression, 1, 0.5),
                event("a", FeedbackKind::Select, 1, 0.5),
                event("b", FeedbackKind::Impression, 3, 0.25),
                event("r", FeedbackKind::Impression, 4, 0.125),
            ],
        )
        .await
        .expect("feedback");
    assert_eq!(recorded, 5);
    assert_eq!(db.feedback_count(CAT).await.expect("count"), 5);
    assert_eq!(db.feedback_count("other").await.expect("count"), 0);

    let ranks = db.rank_inputs(CAT).await.expect("rank");
    let mut got: Vec<&str> = ranks.iter().map(|r| r.id.as_str()).collect();
    got.sort_unstable();
    assert_eq!(got, vec!["a", "b", "c"], "rejected items are not ranked");
    assert_eq!(
        rank_of(&ranks, "a"),
        &RankInput {
            id: "a".to_owned(),
            text: "text of a".to_owned(),
            status: ItemStatus::Active,
            eval_mean: Some(4.0),
            eval_count: 1,
            impressions: 2,
            weighted_impressions: 1.5,
            selections: 1,
        }
    );
    let b = rank_of(&ranks, "b");
    assert_eq!(
        (b.impressions, b.weighted_impressions, b.selections),
        (1, 0.25, 0)
    );
    let c = rank_of(&ranks, "c");
    assert_eq!(
        (c.status, c.impressions, c.selections),
        (ItemStatus::Pending, 0, 0)
    );

    let detail = db.item(CAT, "r").await.expect("item").expect("exists");
    assert_eq!(detail.item.impressions, 1);
    assert_eq!(detail.item.weighted_impressions, 0.125);
    assert_eq!(db.record_feedback(CAT, &[]).await.expect("empty"), 0);
}

async fn unknown_item_rejects_the_whole_batch(backend: Backend) {
    let h = open(backend).await;
    let db = &h.db;
    seed(db, &[("a", ItemStatus::Active)]).await;
    db.insert_items(&[new_item("o", "other", "x", ItemStatus::Active)])
        .await
        .expect("other");
    db.record_feedback(CAT, &[event("a", FeedbackKind::Select, 0, 1.0)])
        .await
        .expect("baseline");

    for stranger in ["zz", "o"] {
        let err = db
            .record_feedback(
                CAT,
                &[
                    event("a", FeedbackKind::Impression, 0, 1.0),
                    event(stranger, FeedbackKind::Select, 1, 0.5),
                    event("a", FeedbackKind::Select, 0, 1.0),
                ],
            )
            .await
            .expect_err("unknown item");
        match err {
            DbError::UnknownItem(id, cat) => {
                assert_eq!((id.as_str(), cat.as_str()), (stranger, CAT))
            }
            other => panic!("expected UnknownItem, got {other:?}"),
        }
    }
    assert_eq!(
        db.feedback_count(CAT).await.expect("count"),
        1,
        "nothing written"
    );
    let a = db.item(CAT, "a").await.expect("item").expect("exists").item;
    assert_eq!(
        (a.impressions, a.weighted_impressions, a.selections),
        (0, 0.0, 1)
    );
    let o = db
        .item("other", "o")
        .await
        .expect("item")
        .expect("exists")
        .item;
    assert_eq!(o.selections, 0);

    let err = db
        .record_feedback(
            CAT,
            &[event("a", FeedbackKind::Impression, 0, f64::INFINITY)],
        )
        .await
        .expect_err("non-finite weight");
    assert!(matches!(err, DbError::Query(_)), "{err:?}");
    assert_eq!(db.feedback_count(CAT).await.expect("count"), 1);
}

async fn claim_generation_has_one_winner(backend: Backend) {
    let h = open(backend).await;
    let db = &h.db;
    db.register_category(CAT, None, None, 1)
        .await
        .expect("register");
    let now = 1_000_000;
    let mut tasks = JoinSet::new();
    for _ in 0..20 {
        let db = db.clone();
        tasks.spawn(async move { db.claim_generation(CAT, now, 60_000).await });
    }
    let mut winners = 0;
    while let Some(result) = tasks.join_next().await {
        if result.expect("task").expect("claim") {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
    let cat = db.category(CAT).await.expect("get").expect("exists");
    assert_eq!(cat.last_generation_ms, Some(now));

    assert!(!db
        .claim_generation(CAT, now + 59_999, 60_000)
        .await
        .expect("cooling"));
    assert!(db
        .claim_generation(CAT, now + 60_000, 60_000)
        .await
        .expect("cooled"));
    assert!(!db
        .claim_generation("unknown", now, 0)
        .await
        .expect("unknown"));

    // A claim whose job could not be queued is given back: the next claim wins at once. An
    // older claim's release leaves a newer claim alone.
    assert!(!db
        .release_generation(CAT, now)
        .await
        .expect("stale release"));
    assert!(db
        .release_generation(CAT, now + 60_000)
        .await
        .expect("release"));
    assert!(db
        .claim_generation(CAT, now + 60_001, 60_000)
        .await
        .expect("claim after release"));
}

/// A provider's daily budget holds under racing takers: of 20 concurrent requests against a
/// limit of 7, exactly 7 are counted. Days and providers are counted apart, tokens add up.
async fn provider_budget_is_never_overdrawn(backend: Backend) {
    let h = open(backend).await;
    let day = 20_000;
    let mut tasks = JoinSet::new();
    for _ in 0..20 {
        let db = h.db.clone();
        tasks.spawn(async move { db.take_provider_request("gpt", day, 0, 7).await });
    }
    let mut counted = 0;
    while let Some(result) = tasks.join_next().await {
        let (yes, spend) = result.expect("task").expect("take");
        assert!(spend.requests <= 7, "{spend:?}");
        counted += usize::from(yes);
    }
    assert_eq!(counted, 7);
    let (yes, spend) =
        h.db.take_provider_request("gpt", day, 0, 7)
            .await
            .expect("take");
    assert_eq!((yes, spend.requests), (false, 7));
    assert!(
        h.db.take_provider_request("gpt", day + 1, 0, 7)
            .await
            .expect("take")
            .0,
        "a new day"
    );
    assert!(
        h.db.take_provider_request("judge", day, 0, 7)
            .await
            .expect("take")
            .0,
        "another provider"
    );

    let spend = h.db.add_provider_tokens("gpt", day, 40).await.expect("add");
    assert_eq!((spend.tokens, spend.requests), (40, 7));
    let spend =
        h.db.add_provider_tokens("embedder", day, 9)
            .await
            .expect("add");
    assert_eq!((spend.tokens, spend.requests), (9, 0));
    let (yes, spend) =
        h.db.take_provider_request("embedder", day, 9, 0)
            .await
            .expect("take");
    assert_eq!(
        (yes, spend.tokens),
        (false, 9),
        "the token limit is reached"
    );
    let (yes, _) =
        h.db.take_provider_request("embedder", day, 10, 0)
            .await
            .expect("take");
    assert!(yes, "under a higher token limit");
}

/// Run only where a second connection sees the same data (not `:memory:`).
async fn feedback_survives_reopening(backend: Backend) {
    let h = open(backend).await;
    seed(&h.db, &[("a", ItemStatus::Active)]).await;
    h.db.record_feedback(
        CAT,
        &[
            event("a", FeedbackKind::Impression, 2, 0.5),
            event("a", FeedbackKind::Select, 2, 0.5),
        ],
    )
    .await
    .expect("feedback");
    // Close this pool entirely before reopening, like a restarted process.
    let Harness { db, url, _dir, _pg } = h;
    drop(db);
    let db = Db::connect(&url).await.expect("reopen");
    assert_eq!(db.feedback_count(CAT).await.expect("count"), 2);
    let a = db.item(CAT, "a").await.expect("item").expect("exists").item;
    assert_eq!(
        (a.impressions, a.weighted_impressions, a.selections),
        (1, 0.5, 1)
    );
}

/// Two pools on one database, like two worker processes sharing a SQLite file.
async fn two_pools_share_one_database(backend: Backend) {
    let h = open(backend).await;
    let other = Db::connect(&h.url).await.expect("second pool");
    h.db.register_category(CAT, None, None, 1)
        .await
        .expect("register");
    assert!(other.category(CAT).await.expect("get").is_some());
    let items: Vec<NewItem> = (0..10)
        .map(|n| new_item(&format!("i{n}"), CAT, &format!("t{n}"), ItemStatus::Active))
        .collect();
    // Both pools insert the same items at once: each id lands exactly once.
    let (x, y) = tokio::join!(h.db.insert_items(&items), other.insert_items(&items));
    let (x, y) = (x.expect("insert x"), y.expect("insert y"));
    assert_eq!(x.len() + y.len(), 10, "x={x:?} y={y:?}");
    let all: HashSet<String> = x.into_iter().chain(y).collect();
    assert_eq!(all.len(), 10);

    // Concurrent feedback from both pools: every event counted.
    let mut tasks = JoinSet::new();
    for n in 0..20u32 {
        let db = if n % 2 == 0 {
            h.db.clone()
        } else {
            other.clone()
        };
        tasks.spawn(async move {
            let id = format!("i{}", n % 10);
            db.record_feedback(CAT, &[event(&id, FeedbackKind::Impression, n, 1.0)])
                .await
        });
    }
    while let Some(result) = tasks.join_next().await {
        assert_eq!(result.expect("task").expect("feedback"), 1);
    }
    assert_eq!(h.db.feedback_count(CAT).await.expect("count"), 20);
    let ranks = other.rank_inputs(CAT).await.expect("rank");
    assert_eq!(ranks.iter().map(|r| r.impressions).sum::<u64>(), 20);

    // And claims across the two pools still have a single winner.
    let (p, q) = tokio::join!(
        h.db.claim_generation(CAT, 5_000, 1_000),
        other.claim_generation(CAT, 5_000, 1_000)
    );
    assert!(
        p.expect("p") ^ q.expect("q"),
        "exactly one pool wins the claim"
    );
}

/// Several processes starting at once against a database nobody has opened yet: the WAL switch
/// (SQLite) and schema creation (PostgreSQL advisory lock) must not trip over each other.
async fn concurrent_first_connects(backend: Backend) {
    let (url, _dir, _pg) = match backend {
        Backend::SqliteFile => {
            let dir = tempfile::tempdir().expect("tempdir");
            let url = format!("sqlite://{}", dir.path().join("fresh.db").display());
            (url, Some(dir), None)
        }
        Backend::Postgres => {
            let pg = PostgresDb::start();
            (pg.url(), None, Some(pg))
        }
        Backend::SqliteMemory => unreachable!("every :memory: connect is a new database"),
    };
    let url: DbUrl = url.parse().expect("db url");
    let mut tasks = JoinSet::new();
    for n in 0..6 {
        let url = url.clone();
        tasks.spawn(async move {
            let db = Db::connect(&url).await?;
            db.register_category(&format!("c{n}"), None, None, 1)
                .await?;
            Ok::<Db, DbError>(db)
        });
    }
    let mut pools = Vec::new();
    while let Some(result) = tasks.join_next().await {
        pools.push(result.expect("task").expect("connect and register"));
    }
    let names: Vec<String> = pools[0]
        .categories()
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ids(&["c0", "c1", "c2", "c3", "c4", "c5"]));
}

/// `#[tokio::test]`s calling each check with the backend named by the module.
macro_rules! backend_tests {
    ($module:ident, $backend:expr, [$($check:ident),* $(,)?]) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    super::$check($backend).await;
                }
            )*
        }
    };
}

backend_tests!(
    sqlite_memory,
    super::Backend::SqliteMemory,
    [
        basics,
        categories_with_korean_names_and_counts,
        insert_items_is_idempotent,
        pool_norms_exclude_rejected,
        evaluations_upsert_and_mean,
        rank_inputs_count_feedback,
        unknown_item_rejects_the_whole_batch,
        claim_generation_has_one_winner,
        provider_budget_is_never_overdrawn,
    ]
);

backend_tests!(
    sqlite_file,
    super::Backend::SqliteFile,
    [
        basics,
        categories_with_korean_names_and_counts,
        insert_items_is_idempotent,
        pool_norms_exclude_rejected,
        evaluations_upsert_and_mean,
        rank_inputs_count_feedback,
        unknown_item_rejects_the_whole_batch,
        claim_generation_has_one_winner,
        provider_budget_is_never_overdrawn,
        feedback_survives_reopening,
        two_pools_share_one_database,
        concurrent_first_connects,
    ]
);

backend_tests!(
    postgres,
    super::Backend::Postgres,
    [
        basics,
        categories_with_korean_names_and_counts,
        insert_items_is_idempotent,
        pool_norms_exclude_rejected,
        evaluations_upsert_and_mean,
        rank_inputs_count_feedback,
        unknown_item_rejects_the_whole_batch,
        claim_generation_has_one_winner,
        provider_budget_is_never_overdrawn,
        feedback_survives_reopening,
        two_pools_share_one_database,
        concurrent_first_connects,
    ]
);
