-- Migration 2: commits on the server.
--
-- `loom_commit(batch)` applies many callers' commits in one statement, so one round trip
-- and one WAL flush serve them all. Each item is checked (lease, kind, sequence, status)
-- before it writes anything; an item that fails a check writes nothing and reports a code,
-- and the other items still commit. Items are applied in workflow-id order, so two batches
-- that touch the same workflows lock them in the same order and cannot deadlock over them.
--
-- Item shapes (built by batch.rs; payloads are Loom's JSON text, stored verbatim):
--   create:   {"t":"c","wf","name","version","input","at","kind"}
--   workflow: {"t":"w","wf","task","token","expected","last","events":[[seq,at,kind]],
--              "acts":[[activity_id,name,input,options]],"timers":[[kind,mode,value]],
--              "term":[status,output,failure]?,"consumed":[id],"logs":[[seq,at,level,text]],
--              "progress":text?}
--   activity: {"t":"a","task","token","act","attempt","result","retry_at"?,"eager"?}
--   (a workflow or activity item's "eager": {"owner","lease_ms","max"} also claims, in the
--   same step, the activity tasks the workflow task scheduled (up to max) or the workflow task
--   the activity's result woke; r_text is then that claim as JSON, or NULL)
--   deliver:  {"t":"s","wf","kind"}
-- Result codes: 0 ok, 1 lease lost, 2 not that kind of task, 3 no such workflow,
-- 4 closed (r_text = status), 5 conflict (r_seq = actual last seq),
-- 6 result for another activity or attempt (r_seq = activity, r_text = attempt),
-- 7 already exists (r_text = status).
--
-- Each statement a function runs costs an executor start-up, so the common paths run few:
-- empty parts are skipped, checks are folded into the statements that write, and the
-- diagnosis of a failed check runs only when one fails.

-- No foreign keys: each checked one fires a trigger, a query and a row lock per inserted row
-- (about fourteen per workflow), and every write to these tables already goes through a
-- statement or function that has locked the workflow's row or its task. No workflow is ever
-- deleted, so nothing needs the cascades.
ALTER TABLE events DROP CONSTRAINT events_workflow_id_fkey;
ALTER TABLE messages DROP CONSTRAINT messages_workflow_id_fkey;
ALTER TABLE tasks DROP CONSTRAINT tasks_workflow_id_fkey;
ALTER TABLE logs DROP CONSTRAINT logs_workflow_id_fkey;

-- Fewer indexes to maintain on the hottest rows: every change of a task's visibility is a
-- new index entry in each of its indexes. `messages_by_time` served only `stats`, which
-- scans the (short-lived) messages instead; the workflow task is found by
-- `tasks_workflow_task`, so the by-workflow index needs to hold activity tasks only.
DROP INDEX messages_by_time;
DROP INDEX tasks_by_workflow;
CREATE INDEX tasks_activities_by_workflow ON tasks (workflow_id) WHERE kind = 1;

-- Ids compare byte by byte: every index on the hot path is keyed by a workflow id, and a
-- locale-aware comparison (the database's default collation) costs several times as much.
ALTER TABLE workflows ALTER COLUMN id TYPE text COLLATE "C";
ALTER TABLE events ALTER COLUMN workflow_id TYPE text COLLATE "C";
ALTER TABLE messages ALTER COLUMN workflow_id TYPE text COLLATE "C";
ALTER TABLE tasks ALTER COLUMN workflow_id TYPE text COLLATE "C";
ALTER TABLE logs ALTER COLUMN workflow_id TYPE text COLLATE "C";
-- Room on each page for the new version of a row, so that a commit's update of a workflow's
-- last sequence number and progress stays on its page and touches no index (a HOT update).
ALTER TABLE workflows SET (fillfactor = 80);

-- The database's clock in milliseconds, now in PL/pgSQL: a SQL function whose body calls a
-- volatile function is never inlined, and PostgreSQL parses and plans such a body afresh in
-- every statement that calls it; PL/pgSQL keeps the compiled expression for the session.
CREATE OR REPLACE FUNCTION loom_now_ms() RETURNS bigint LANGUAGE plpgsql STABLE
    AS $$ BEGIN RETURN (extract(epoch FROM clock_timestamp()) * 1000)::bigint; END $$;

CREATE FUNCTION loom_commit(batch jsonb)
RETURNS TABLE (r_index integer, r_code smallint, r_seq bigint, r_text text)
LANGUAGE plpgsql AS $$
DECLARE
    item jsonb;
    pos integer;
    wf text;
    task_id bigint;
    token bigint;
    now_ms bigint;
    wt record;
    ar record;
    ad record;
    eager jsonb;
    sr record;
BEGIN
    FOR item, pos IN
        SELECT b.value, b.ordinality::integer
        FROM jsonb_array_elements(batch) WITH ORDINALITY AS b
        ORDER BY COALESCE(b.value->>'wf',
                 (SELECT tk.workflow_id FROM tasks tk WHERE tk.id = (b.value->>'task')::bigint)),
                 b.ordinality
    LOOP
        r_index := pos;
        r_code := 0;
        r_seq := NULL;
        r_text := NULL;
        now_ms := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
        wf := item->>'wf';
        task_id := (item->>'task')::bigint;
        token := (item->>'token')::bigint;
        eager := item->'eager';
        CASE item->>'t'
        WHEN 'c' THEN
            WITH w AS (
                INSERT INTO workflows (id, name, version, status, input, created_at, updated_at, last_seq)
                VALUES (wf, item->>'name', (item->>'version')::integer, 'running', item->>'input',
                        now_ms, now_ms, 1)
                ON CONFLICT (id) DO NOTHING
                RETURNING id
            ), e AS (
                INSERT INTO events (workflow_id, seq, at, kind)
                SELECT id, 1, (item->>'at')::bigint, item->>'kind' FROM w
            )
            INSERT INTO tasks (kind, workflow_id, visible_at) SELECT 0, id, now_ms FROM w;
            IF NOT FOUND THEN
                SELECT status INTO r_text FROM workflows WHERE id = wf;
                r_code := 7;
            END IF;

        WHEN 'w' THEN
            SELECT t.kind, t.workflow_id, w.last_seq, w.status INTO wt
            FROM tasks t JOIN workflows w ON w.id = t.workflow_id
            WHERE t.id = task_id AND t.lease_token = token AND t.lease_expires_at > now_ms
            FOR UPDATE;
            IF NOT FOUND THEN
                r_code := 1;
            ELSIF wt.kind <> 0 OR wt.workflow_id <> wf THEN
                r_code := 2;
            ELSIF wt.status IN ('completed', 'failed', 'cancelled')
                  AND jsonb_array_length(item->'events') > 0 THEN
                r_code := 4;
                r_text := wt.status;
            ELSIF wt.last_seq <> (item->>'expected')::bigint THEN
                r_code := 5;
                r_seq := wt.last_seq;
            ELSE
                IF jsonb_array_length(item->'logs') > 0 THEN
                    INSERT INTO logs (workflow_id, seq, at, level, message)
                    SELECT wf, (l->>0)::bigint, (l->>1)::bigint, l->>2, l->>3
                    FROM jsonb_array_elements(item->'logs') AS l;
                END IF;
                IF item ? 'term' THEN
                    -- The workflow ends: its messages and tasks go, so the activities and
                    -- timers this task scheduled are not written at all.
                    WITH e AS (
                        INSERT INTO events (workflow_id, seq, at, kind)
                        SELECT wf, (e->>0)::bigint, (e->>1)::bigint, e->>2
                        FROM jsonb_array_elements(item->'events') AS e
                    )
                    UPDATE workflows SET last_seq = (item->>'last')::bigint,
                        status = item->'term'->>0, output = item->'term'->>1,
                        failure = item->'term'->>2, pause_reason = NULL, closed_at = now_ms,
                        updated_at = now_ms, progress = COALESCE(item->>'progress', progress)
                    WHERE id = wf;
                    DELETE FROM messages WHERE workflow_id = wf;
                    DELETE FROM tasks
                    WHERE (workflow_id = wf AND kind = 0) OR (workflow_id = wf AND kind = 1);
                ELSE
                    IF jsonb_array_length(item->'timers') > 0 THEN
                        INSERT INTO messages (workflow_id, visible_at, kind)
                        SELECT wf, CASE (m->>1)::integer WHEN 1 THEN now_ms + (m->>2)::bigint
                                                         ELSE (m->>2)::bigint END, m->>0
                        FROM jsonb_array_elements(item->'timers') AS m;
                    END IF;
                    WITH e AS (
                        INSERT INTO events (workflow_id, seq, at, kind)
                        SELECT wf, (e->>0)::bigint, (e->>1)::bigint, e->>2
                        FROM jsonb_array_elements(item->'events') AS e
                    ), a AS (
                        INSERT INTO tasks (kind, workflow_id, visible_at, activity_id, name, input, options, attempt)
                        SELECT 1, wf, now_ms, (a->>0)::bigint, a->>1, a->>2, a->>3, 1
                        FROM jsonb_array_elements(item->'acts') AS a
                    )
                    UPDATE workflows SET last_seq = (item->>'last')::bigint,
                        updated_at = now_ms, progress = COALESCE(item->>'progress', progress),
                        status = CASE WHEN status = 'paused' THEN 'running' ELSE status END,
                        pause_reason = CASE WHEN status = 'paused' THEN NULL ELSE pause_reason END
                    WHERE id = wf;
                    -- Release the lease; the task is ready at its earliest remaining message.
                    -- (The subquery sees the messages as they were before this statement, so
                    -- the ones it deletes are left out by id.)
                    WITH d AS (
                        DELETE FROM messages WHERE workflow_id = wf
                          AND id IN (SELECT c::bigint FROM jsonb_array_elements_text(item->'consumed') AS c)
                        RETURNING id
                    )
                    UPDATE tasks SET lease_expires_at = NULL, lease_owner = NULL, deliveries = 0,
                        visible_at = (SELECT MIN(m.visible_at) FROM messages m
                                      WHERE m.workflow_id = wf AND m.id NOT IN (SELECT id FROM d))
                    WHERE id = task_id;
                    IF eager IS NOT NULL AND jsonb_array_length(item->'acts') > 0 THEN
                        WITH picked AS (
                            SELECT id FROM tasks
                            WHERE workflow_id = wf AND kind = 1 AND visible_at <= now_ms
                            ORDER BY visible_at, id LIMIT (eager->>'max')::bigint
                            FOR UPDATE SKIP LOCKED
                        ), claimed AS (
                            UPDATE tasks t SET lease_token = t.lease_token + 1,
                                lease_expires_at = now_ms + (eager->>'lease_ms')::bigint,
                                visible_at = now_ms + (eager->>'lease_ms')::bigint,
                                lease_owner = eager->>'owner', deliveries = t.deliveries + 1
                            FROM picked WHERE t.id = picked.id
                            RETURNING t.id, t.lease_token, t.lease_expires_at, t.deliveries,
                                t.activity_id, t.name, t.input, t.options, t.attempt
                        )
                        SELECT jsonb_agg(jsonb_build_array(id, lease_token, lease_expires_at,
                                   deliveries, activity_id, name, input, options, attempt))::text
                        INTO r_text FROM claimed;
                    END IF;
                END IF;
            END IF;

        WHEN 'a' THEN
            -- The check and the delete in one statement; the diagnosis only when it fails.
            DELETE FROM tasks
            WHERE id = task_id AND lease_token = token AND lease_expires_at > now_ms
              AND kind = 1 AND activity_id = (item->>'act')::bigint
              AND attempt = (item->>'attempt')::integer
            RETURNING workflow_id, activity_id, attempt, name, input, options INTO ar;
            IF NOT FOUND THEN
                SELECT kind, activity_id, attempt INTO ad FROM tasks
                WHERE id = task_id AND lease_token = token AND lease_expires_at > now_ms;
                IF NOT FOUND THEN
                    r_code := 1;
                ELSIF ad.kind <> 1 THEN
                    r_code := 2;
                ELSE
                    r_code := 6;
                    r_seq := ad.activity_id;
                    r_text := ad.attempt::text;
                END IF;
            ELSE
                -- The result waits as a message; the workflow task becomes ready now unless a
                -- live lease holds it, in which case it is ready when that lease ends.
                WITH m AS (
                    INSERT INTO messages (workflow_id, visible_at, kind)
                    VALUES (ar.workflow_id, now_ms, item->>'result')
                )
                UPDATE tasks SET visible_at = LEAST(COALESCE(visible_at, now_ms),
                    CASE WHEN lease_expires_at > now_ms THEN GREATEST(now_ms, lease_expires_at)
                         ELSE now_ms END)
                WHERE kind = 0 AND workflow_id = ar.workflow_id;
                IF item ? 'retry_at' THEN
                    INSERT INTO tasks (kind, workflow_id, visible_at, activity_id, name, input, options, attempt)
                    VALUES (1, ar.workflow_id, (item->>'retry_at')::bigint, ar.activity_id, ar.name,
                            ar.input, ar.options, ar.attempt + 1);
                END IF;
                IF eager IS NOT NULL THEN
                    -- Ready now only if no live lease held it (see the update above).
                    WITH claimed AS (
                        UPDATE tasks SET lease_token = lease_token + 1,
                            lease_expires_at = now_ms + (eager->>'lease_ms')::bigint,
                            visible_at = now_ms + (eager->>'lease_ms')::bigint,
                            lease_owner = eager->>'owner', deliveries = deliveries + 1
                        WHERE kind = 0 AND workflow_id = ar.workflow_id AND visible_at <= now_ms
                        RETURNING id, lease_token, lease_expires_at, deliveries
                    )
                    SELECT jsonb_build_array(c.id, c.lease_token, c.lease_expires_at, c.deliveries,
                               ar.workflow_id, w.name, w.last_seq,
                               (SELECT COALESCE(jsonb_agg(jsonb_build_array(m.id, m.visible_at, m.kind)
                                                          ORDER BY m.visible_at, m.id), '[]'::jsonb)
                                FROM messages m
                                WHERE m.workflow_id = ar.workflow_id AND m.visible_at <= now_ms))::text
                    INTO r_text
                    FROM claimed c JOIN workflows w ON w.id = ar.workflow_id;
                END IF;
            END IF;

        WHEN 's' THEN
            -- The workflow task first, then the workflow: the order a workflow commit takes.
            PERFORM 1 FROM tasks WHERE kind = 0 AND workflow_id = wf FOR UPDATE;
            SELECT status INTO sr FROM workflows WHERE id = wf FOR UPDATE;
            IF NOT FOUND THEN
                r_code := 3;
            ELSIF sr.status IN ('completed', 'failed', 'cancelled') THEN
                r_code := 4;
                r_text := sr.status;
            ELSE
                WITH m AS (
                    INSERT INTO messages (workflow_id, visible_at, kind)
                    VALUES (wf, now_ms, item->>'kind')
                )
                UPDATE tasks SET visible_at = LEAST(COALESCE(visible_at, now_ms),
                    CASE WHEN lease_expires_at > now_ms THEN GREATEST(now_ms, lease_expires_at)
                         ELSE now_ms END)
                WHERE kind = 0 AND workflow_id = wf;
            END IF;
        END CASE;
        RETURN NEXT;
    END LOOP;
END $$;
