//! Claims and lease renewals: single statements on the pool, outside `loom_apply`. Each
//! applies the engine's write set for the call (one claim op, or one lease check and one
//! renewal) in one statement: claims with `FOR UPDATE SKIP LOCKED`, so concurrent claimers
//! skip each other's rows instead of waiting.

use std::time::Duration;

use loom_core::{ActivityId, Timestamp, WorkflowId};
use loom_storage::{
    ActivityTask, ClaimRequest, Lease, Message, MessageId, Result, StorageError, TaskId,
    WorkflowTask,
};
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::{PostgresStorage, millis, seq, sql_err, task_i64};
use loom_storage::engine::wire::decode;

const ACTIVITY_TASK: i16 = 1;

impl PostgresStorage {
    /// Claims up to `max` ready tasks of `kind` in one statement.
    async fn claim(&self, kind: i16, req: &ClaimRequest) -> Result<Vec<PgRow>> {
        sqlx::query(
            "WITH now AS MATERIALIZED (SELECT loom_now_ms() AS ms), picked AS (
                SELECT id, visible_at FROM tasks WHERE kind = $1 AND visible_at <= (SELECT ms FROM now)
                ORDER BY visible_at, id LIMIT $2 FOR UPDATE SKIP LOCKED
             )
             UPDATE tasks t SET lease_token = t.lease_token + 1, lease_expires_at = now.ms + $3,
                 visible_at = now.ms + $3, lease_owner = $4, deliveries = t.deliveries + 1
             FROM picked, now WHERE t.id = picked.id
             RETURNING t.id, t.workflow_id, t.lease_token, t.lease_expires_at, t.deliveries,
                 t.activity_id, t.name, t.input, t.options, t.attempt, now.ms, picked.visible_at",
        )
        .bind(kind)
        .bind(i64::try_from(req.max).unwrap_or(i64::MAX))
        .bind(millis(req.lease))
        .bind(&req.owner)
        .fetch_all(&self.pool)
        .await
        .map_err(sql_err)
    }
}

fn lease_of(row: &PgRow) -> Lease {
    Lease {
        task: TaskId(row.get::<i64, _>(0).unsigned_abs()),
        token: row.get::<i64, _>(2).unsigned_abs(),
        expires_at: Timestamp::from_millis(row.get(3)),
    }
}

impl PostgresStorage {
    pub(crate) async fn claim_workflows(&self, req: &ClaimRequest) -> Result<Vec<WorkflowTask>> {
        if req.max == 0 {
            return Ok(Vec::new());
        }
        // One statement: claim (the tasks preferring this owner first, by the index of
        // preferred owners; then the queue for the rest, passing over what another owner's
        // affinity keeps and its own, all found already), then read each claimed workflow's
        // name, run, last sequence number and due messages (as parallel arrays, oldest
        // first). Every row locked is a row taken: a row locked and not taken would be
        // skipped by a concurrent claim for nothing.
        let rows = sqlx::query(
            "WITH now AS MATERIALIZED (SELECT loom_now_ms() AS ms), own AS (
                SELECT id, visible_at FROM tasks
                WHERE affinity_owner = $3 AND visible_at <= (SELECT ms FROM now)
                ORDER BY visible_at, id LIMIT $1 FOR UPDATE SKIP LOCKED
             ), rest AS (
                SELECT id, visible_at FROM tasks
                WHERE kind = 0 AND visible_at <= (SELECT ms FROM now)
                  AND (affinity_owner IS NULL OR (affinity_owner <> $3
                       AND affinity_until <= (SELECT ms FROM now)))
                ORDER BY visible_at, id LIMIT $1 - (SELECT count(*) FROM own)
                FOR UPDATE SKIP LOCKED
             ), picked AS (
                SELECT id, visible_at, true AS first FROM own
                UNION ALL
                SELECT id, visible_at, false FROM rest
             ), claimed AS (
                UPDATE tasks t SET lease_token = t.lease_token + 1, lease_expires_at = now.ms + $2,
                    visible_at = now.ms + $2, lease_owner = $3, deliveries = t.deliveries + 1
                FROM picked, now WHERE t.id = picked.id
                RETURNING t.id, t.workflow_id, t.lease_token, t.lease_expires_at, t.deliveries
             )
             SELECT c.id, c.workflow_id, c.lease_token, c.lease_expires_at, c.deliveries,
                 w.name, w.last_seq, m.ids, m.ats, m.kinds, (SELECT ms FROM now), w.run,
                 p.visible_at
             FROM claimed c
             JOIN picked p ON p.id = c.id
             JOIN workflows w ON w.id = c.workflow_id
             CROSS JOIN LATERAL (
                SELECT array_agg(id ORDER BY visible_at, id) AS ids,
                       array_agg(visible_at ORDER BY visible_at, id) AS ats,
                       array_agg(kind ORDER BY visible_at, id) AS kinds
                FROM messages WHERE workflow_id = c.workflow_id AND visible_at <= (SELECT ms FROM now)
             ) m
             ORDER BY p.first DESC, p.visible_at, p.id",
        )
        .bind(i64::try_from(req.max).unwrap_or(i64::MAX))
        .bind(millis(req.lease))
        .bind(&req.owner)
        .fetch_all(&self.pool)
        .await
        .map_err(sql_err)?;
        let mut tasks = Vec::with_capacity(rows.len());
        for row in &rows {
            let workflow_id: String = row.get(1);
            let ids: Vec<i64> = row.get::<Option<Vec<i64>>, _>(7).unwrap_or_default();
            let ats: Vec<i64> = row.get::<Option<Vec<i64>>, _>(8).unwrap_or_default();
            let kinds: Vec<String> = row.get::<Option<Vec<String>>, _>(9).unwrap_or_default();
            let mut due = Vec::with_capacity(ids.len());
            for ((mid, at), kind) in ids.into_iter().zip(ats).zip(kinds) {
                due.push(Message {
                    id: MessageId(mid.unsigned_abs()),
                    kind: decode(&kind, || format!("message {mid} of workflow {workflow_id}"))?,
                    visible_at: Timestamp::from_millis(at),
                });
            }
            tasks.push(WorkflowTask {
                lease: lease_of(row),
                workflow_name: row.get(5),
                run: u32::try_from(row.get::<i32, _>(11)).unwrap_or(1),
                last_seq: seq(row.get(6)),
                messages: due,
                deliveries: u32::try_from(row.get::<i32, _>(4)).unwrap_or(0),
                workflow_id: WorkflowId::new(workflow_id),
                ready_at: Timestamp::from_millis(row.get(12)),
                claimed_at: Timestamp::from_millis(row.get(10)),
            });
        }
        Ok(tasks)
    }

    pub(crate) async fn claim_activities(&self, req: &ClaimRequest) -> Result<Vec<ActivityTask>> {
        if req.max == 0 {
            return Ok(Vec::new());
        }
        let rows = self.claim(ACTIVITY_TASK, req).await?;
        rows.iter()
            .map(|row| {
                let task: i64 = row.get(0);
                let input: String = row.get(7);
                let options: String = row.get(8);
                Ok(ActivityTask {
                    lease: lease_of(row),
                    workflow_id: WorkflowId::new(row.get::<String, _>(1)),
                    activity_id: ActivityId(seq(row.get::<Option<i64>, _>(5).unwrap_or(0))),
                    name: row.get::<Option<String>, _>(6).unwrap_or_default(),
                    input: decode(&input, || format!("the input of activity task {task}"))?,
                    options: decode(&options, || format!("the options of activity task {task}"))?,
                    attempt: u32::try_from(row.get::<Option<i32>, _>(9).unwrap_or(1)).unwrap_or(1),
                    deliveries: u32::try_from(row.get::<i32, _>(4)).unwrap_or(0),
                    ready_at: Timestamp::from_millis(row.get(11)),
                    claimed_at: Timestamp::from_millis(row.get(10)),
                })
            })
            .collect()
    }

    pub(crate) async fn renew(&self, lease: &Lease, extend: Duration) -> Result<Lease> {
        // One statement, no transaction: the check and the extension together.
        let expires: Option<i64> = sqlx::query_scalar(
            "UPDATE tasks SET lease_expires_at = loom_now_ms() + $3, visible_at = loom_now_ms() + $3
             WHERE id = $1 AND lease_token = $2 AND lease_expires_at > loom_now_ms()
             RETURNING lease_expires_at",
        )
        .bind(task_i64(lease.task))
        .bind(i64::try_from(lease.token).unwrap_or(i64::MAX))
        .bind(millis(extend))
        .fetch_optional(&self.pool)
        .await
        .map_err(sql_err)?;
        match expires {
            Some(expires) => Ok(Lease {
                expires_at: Timestamp::from_millis(expires),
                ..*lease
            }),
            None => Err(StorageError::LeaseLost(lease.task)),
        }
    }
}
