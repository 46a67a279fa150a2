//! Tags: set at start and by the code, kept per workflow, listed by equality and by range.

use loom_core::{TagValue, Tags};

use super::*;
use crate::{ListQuery, StorageError, TagCmp, TagFilter};

fn tagged(id: &str, tags: &[(&str, TagValue)]) -> Event {
    let mut e = started("Conformance", id);
    if let EventKind::WorkflowStarted { tags: t, .. } = &mut e.kind {
        *t = tags
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
    }
    e
}

fn set(key: &str, value: impl Into<TagValue>) -> EventKind {
    EventKind::TagSet {
        key: key.into(),
        value: value.into(),
    }
}

fn filter(key: &str, cmp: TagCmp, value: impl Into<TagValue>) -> TagFilter {
    TagFilter {
        key: key.into(),
        cmp,
        value: value.into(),
    }
}

async fn ids(store: &Store, tags: Vec<TagFilter>) -> Vec<String> {
    let query = ListQuery {
        tags,
        limit: 100,
        ..ListQuery::default()
    };
    let page = store.list(&query).await.expect("list");
    page.items.into_iter().map(|s| s.id.to_string()).collect()
}

/// A workflow's tags are those it started with and those its commits set, the last value of
/// each key winning; a listing filters by equality as text (the number 42 and the text "42"
/// alike), by ranges over int and time tags, by several tags at once, newest first and page
/// by page; a purged workflow is no longer found. A tag no store can hold is refused, and the
/// start or commit writes nothing.
pub async fn tags_are_kept_and_listed(store: Store) {
    let due = wall_now();
    store
        .create_workflow(
            &wid("t1"),
            tagged(
                "t1",
                &[
                    ("customer", TagValue::Int(42)),
                    ("vip", TagValue::Bool(true)),
                ],
            ),
        )
        .await
        .expect("create t1");
    advance(
        &store,
        vec![
            set("amount", 250),
            set("stage", "paid"),
            set("amount", 300),
            set("due", due),
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    store
        .create_workflow(
            &wid("t2"),
            tagged(
                "t2",
                &[
                    ("customer", TagValue::Text("42".into())),
                    ("region", TagValue::Text("eu".into())),
                ],
            ),
        )
        .await
        .expect("create t2");
    create(&store, "t3").await;

    let t1 = store.describe(&wid("t1")).await.expect("describe");
    let expected: Tags = [
        ("amount", TagValue::Int(300)),
        ("customer", TagValue::Int(42)),
        ("due", TagValue::Time(due)),
        ("stage", TagValue::Text("paid".into())),
        ("vip", TagValue::Bool(true)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(t1.tags, expected);
    assert!(
        store
            .describe(&wid("t3"))
            .await
            .expect("t3")
            .tags
            .is_empty()
    );

    assert_eq!(
        ids(&store, vec![filter("customer", TagCmp::Eq, 42)]).await,
        ["t2", "t1"]
    );
    assert_eq!(
        ids(&store, vec![filter("customer", TagCmp::Eq, "42")]).await,
        ["t2", "t1"]
    );
    assert_eq!(
        ids(&store, vec![filter("vip", TagCmp::Eq, true)]).await,
        ["t1"]
    );
    assert_eq!(
        ids(&store, vec![filter("amount", TagCmp::Ge, 300)]).await,
        ["t1"]
    );
    assert!(
        ids(&store, vec![filter("amount", TagCmp::Gt, 300)])
            .await
            .is_empty()
    );
    assert_eq!(
        ids(&store, vec![filter("amount", TagCmp::Lt, 1_000)]).await,
        ["t1"]
    );
    assert!(
        ids(&store, vec![filter("amount", TagCmp::Le, 299)])
            .await
            .is_empty()
    );
    assert_eq!(
        ids(&store, vec![filter("due", TagCmp::Le, due)]).await,
        ["t1"]
    );
    assert!(
        ids(&store, vec![filter("stage", TagCmp::Gt, 1)])
            .await
            .is_empty(),
        "a range never passes a text tag"
    );
    assert_eq!(
        ids(
            &store,
            vec![
                filter("customer", TagCmp::Eq, 42),
                filter("region", TagCmp::Eq, "eu")
            ]
        )
        .await,
        ["t2"]
    );
    assert!(
        ids(&store, vec![filter("nobody", TagCmp::Eq, 1)])
            .await
            .is_empty()
    );
    // Page by page.
    let mut query = ListQuery {
        tags: vec![filter("customer", TagCmp::Eq, 42)],
        limit: 1,
        ..ListQuery::default()
    };
    let first = store.list(&query).await.expect("page 1");
    assert_eq!(first.items[0].id, wid("t2"));
    query.after = first.next;
    let second = store.list(&query).await.expect("page 2");
    assert_eq!(second.items[0].id, wid("t1"));
    assert!(second.next.is_none());

    // Tags no store can hold.
    assert!(matches!(
        store
            .create_workflow(
                &wid("bad"),
                tagged("bad", &[("no spaces", TagValue::Int(1))])
            )
            .await,
        Err(StorageError::InvalidArgument(_))
    ));
    assert!(matches!(
        store.describe(&wid("bad")).await,
        Err(StorageError::NotFound(_))
    ));
    let task = claim_workflow(&store).await;
    assert_eq!(task.workflow_id, wid("t2"));
    assert!(matches!(
        store
            .complete_workflow_task(completion(&task, vec![set("k", "x".repeat(1_000))]))
            .await,
        Err(StorageError::InvalidArgument(_))
    ));
    // t2 ends and is purged: no listing finds it again.
    store
        .complete_workflow_task(completion(
            &task,
            vec![EventKind::WorkflowCompleted { output: json(1) }],
        ))
        .await
        .expect("t2 ends");
    let purge = crate::Purge {
        older_than: Duration::ZERO,
        status: None,
        name: None,
        except_names: Vec::new(),
        limit: 10,
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(store.purge(&purge).await.expect("purge"), [wid("t2")]);
    assert_eq!(
        ids(&store, vec![filter("customer", TagCmp::Eq, 42)]).await,
        ["t1"]
    );
}
