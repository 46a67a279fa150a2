-- The store engine's applier on the server: the current definitions of its functions.
--
-- Every migration that changes them includes this file (schema.rs), and CREATE OR REPLACE
-- makes applying it again harmless; a change must keep each function's signature.
--
-- `loom_apply(batch)` applies many callers' write sets (see loom_storage::engine) in one
-- statement, so one round trip and one WAL flush serve them all. It decides nothing: each
-- item carries the engine's checks and its writes, grouped by the Rust side into steps
-- (loom_storage::engine::wire). The checks are evaluated under row locks before anything is written; an item
-- whose check fails writes nothing and reports which check failed and what it found (the
-- Rust side turns that into the engine's error), and the other items still commit. Items are
-- applied in workflow-id order, and every item locks a workflow's task before the workflow's
-- row, so two batches lock in one order.
--
-- Item:   {"wf"?, "task"?, "checks": [check], "steps": [step]}
-- Check:  ["leased", task, token] | ["wft_of", task, wf] | ["is_wft", task]
--         | ["attempt", task, wf, activity, attempt] | ["absent", wf] | ["open", wf]
--         | ["last", wf, seq] | ["run", wf, run] | ["paused", wf] | ["child_of", wf, parent]
--         | ["free", wf] | ["no_wft", wf] | ["quiet", wf]
--         | ["sched", id, version]   (version null: no schedule has the id)
-- Found:  a task [workflow, kind, activity_id, attempt, token, lease_expires_at],
--         a workflow [status, last_seq, parent, run], the earliest message time, or a
--         schedule's version; null for no row.
-- Step:   {"s":"w", "wf", parts...}   a run of primitive writes, by table ("tg": tags set,
--                                      [[key, value, text, num]]); "up" (withdraw
--                                      messages by kind) and "da" (delete an activity's task)
--                                      come after posts; "st" (settle the workflow task at its
--                                      earliest message: true, or {"o": owner, "ms": window}
--                                      for an affinity) comes last
--         {"s":"nr", "wf", "ev": [seq, at, kind], "ver", "input"}   a new run (continue-as-new)
--         {"s":"rr", "wf", "ev": [[seq, at, kind]], "ver", "input", "last", "progress",
--          "keep_signals"}   a new run from a prefix (a reset)
--         {"s":"hold", "wf", "reason"}   an operator's pause: paused, its workflow task deleted
--         {"s":"forget", "owner"}   every affinity naming the worker cleared
--         {"s":"purge", "older_ms", "status", "name", "except", "max"}   retention: closed
--                                      workflows deleted, with everything of theirs
--         {"s":"claim_a"|"claim_w", "wf", "owner", "lease_ms", "max"}
--         {"s":"sput", "id", "new", "version", "wake", "body"}   a schedule stored, new or replaced
--         {"s":"sdel", "id"}   a schedule deleted
--         {"s":"if", "all": [check], "then": [step], "else": [step]}
-- A time is [relative, ms]: ms + now when relative is 1, ms itself when 0 (written out as
-- `ms + now * relative` at each use: a SQL function taking the jsonb fields is not inlined,
-- and would be parsed and planned again in every statement that calls it).
-- Answer: r_failed (the failed check's position, from 1) with r_found, or r_out:
--   {"acts": [[task, token, expires, deliveries, activity_id, name, input, options, attempt]],
--    "acts_ready": [ready_at, one per element of acts],
--    "wfts": [[task, token, expires, deliveries, workflow, name, last_seq, [[id, at, kind]], run]],
--    "wfts_ready": [ready_at, one per element of wfts],
-- (The ready times are keys of their own, not elements of the arrays above: a worker of an
-- earlier release, still running while the schema is upgraded, reads those arrays as tuples
-- of exactly their old length.)
--    "decided": bool (whether the conditions of the first "if" applied held),
--    "purged": [workflow ids]}
-- and r_now, the database's clock for the item.


-- The first check of `checks` that fails at `now_ms`, as [position, found]; NULL if all hold.
-- Rows are locked as they are read. Consecutive checks of one row read it once.
CREATE OR REPLACE FUNCTION loom_checks(checks jsonb, now_ms bigint) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    c jsonb;
    k integer;
    i integer;
    ok boolean;
    found_row jsonb;
    t_id bigint;
    t record;
    t_found boolean := false;
    w_id text;
    w_status text;
    w_last bigint;
    w_parent text;
    w_run integer;
    w_found boolean := false;
    -- The workflow whose task the checks have locked, if any.
    locked_wft text;
    earliest bigint;
    sched_version bigint;
BEGIN
    FOR k IN 0 .. COALESCE(jsonb_array_length(checks), 0) - 1 LOOP
        c := checks->k;
        i := k + 1;
        CASE c->>0
        WHEN 'leased', 'wft_of', 'is_wft', 'attempt' THEN
            IF t_id IS DISTINCT FROM (c->>1)::bigint THEN
                t_id := (c->>1)::bigint;
                t_found := false;
                IF checks->(k + 1)->>0 = 'wft_of' THEN
                    -- A workflow task's commit: the task and its workflow, locked in that
                    -- order by one statement, for the checks of both that follow.
                    SELECT tk.workflow_id, tk.kind, tk.activity_id, tk.attempt, tk.lease_token,
                           tk.lease_expires_at, wr.status, wr.last_seq, wr.parent_id, wr.run
                    INTO t FROM tasks tk JOIN workflows wr ON wr.id = tk.workflow_id
                    WHERE tk.id = t_id AND tk.kind = 0 FOR UPDATE;
                    IF FOUND THEN
                        t_found := true;
                        locked_wft := t.workflow_id;
                        w_id := t.workflow_id;
                        w_found := true;
                        w_status := t.status;
                        w_last := t.last_seq;
                        w_parent := t.parent_id;
                        w_run := t.run;
                    END IF;
                END IF;
                IF NOT t_found THEN
                    SELECT workflow_id, kind, activity_id, attempt, lease_token, lease_expires_at
                    INTO t FROM tasks WHERE id = t_id FOR UPDATE;
                    t_found := FOUND;
                    IF t_found AND t.kind = 0 THEN
                        locked_wft := t.workflow_id;
                    END IF;
                END IF;
            END IF;
            ok := t_found AND CASE c->>0
                WHEN 'leased' THEN t.lease_token = (c->>2)::bigint
                                   AND t.lease_expires_at > now_ms
                WHEN 'wft_of' THEN t.kind = 0 AND t.workflow_id = c->>2
                WHEN 'is_wft' THEN t.kind = 0
                ELSE t.kind = 1 AND t.workflow_id = c->>2
                     AND t.activity_id = (c->>3)::bigint AND t.attempt = (c->>4)::integer
            END;
            IF NOT COALESCE(ok, false) AND t_found THEN
                found_row := jsonb_build_array(t.workflow_id, t.kind, t.activity_id, t.attempt,
                                               t.lease_token, t.lease_expires_at);
            END IF;
        WHEN 'absent', 'open', 'last', 'run', 'paused', 'child_of' THEN
            IF w_id IS DISTINCT FROM c->>1 THEN
                w_id := c->>1;
                IF c->>0 = 'absent' THEN
                    -- A missing row cannot be locked: concurrent starts of one id queue on
                    -- an advisory lock instead, taken by the same statement.
                    SELECT wr.status, wr.last_seq, wr.parent_id, wr.run
                    INTO w_status, w_last, w_parent, w_run
                    FROM (SELECT pg_advisory_xact_lock(hashtextextended('loom:' || w_id, 0))) l
                    LEFT JOIN workflows wr ON wr.id = w_id;
                    w_found := w_status IS NOT NULL;
                ELSE
                    -- The workflow's task before the workflow: the order every item takes.
                    IF locked_wft IS DISTINCT FROM w_id THEN
                        PERFORM 1 FROM tasks WHERE workflow_id = w_id AND kind = 0 FOR UPDATE;
                        locked_wft := w_id;
                    END IF;
                    SELECT status, last_seq, parent_id, run INTO w_status, w_last, w_parent, w_run
                    FROM workflows WHERE id = w_id FOR UPDATE;
                    w_found := FOUND;
                END IF;
            END IF;
            ok := CASE c->>0
                WHEN 'absent' THEN NOT w_found
                WHEN 'open' THEN w_found
                    AND w_status NOT IN ('completed', 'failed', 'cancelled', 'terminated', 'timed_out')
                WHEN 'child_of' THEN w_found
                    AND w_status NOT IN ('completed', 'failed', 'cancelled', 'terminated', 'timed_out')
                    AND w_parent = c->>2
                WHEN 'run' THEN w_found AND w_run = (c->>2)::integer
                WHEN 'paused' THEN w_found AND w_status = 'paused'
                ELSE w_found AND w_last = (c->>2)::bigint
            END;
            IF NOT COALESCE(ok, false) AND w_found THEN
                found_row := jsonb_build_array(w_status, w_last, w_parent, w_run);
            END IF;
        WHEN 'free', 'no_wft' THEN
            SELECT workflow_id, kind, activity_id, attempt, lease_token, lease_expires_at
            INTO t FROM tasks WHERE workflow_id = c->>1 AND kind = 0 FOR UPDATE;
            t_found := FOUND;
            t_id := NULL;
            IF t_found THEN
                locked_wft := c->>1;
            END IF;
            ok := CASE c->>0
                WHEN 'no_wft' THEN NOT t_found
                ELSE t_found AND (t.lease_expires_at IS NULL OR t.lease_expires_at <= now_ms)
            END;
            IF NOT COALESCE(ok, false) AND t_found THEN
                found_row := jsonb_build_array(t.workflow_id, t.kind, t.activity_id, t.attempt,
                                               t.lease_token, t.lease_expires_at);
            END IF;
        WHEN 'quiet' THEN
            SELECT MIN(visible_at) INTO earliest FROM messages WHERE workflow_id = c->>1;
            ok := earliest IS NULL OR earliest > now_ms;
            found_row := to_jsonb(earliest);
        WHEN 'sched' THEN
            -- A missing row cannot be locked: writes of one schedule queue on an advisory
            -- lock first, so that of two creates at once the second finds the first's row.
            PERFORM pg_advisory_xact_lock(hashtextextended('loom-schedule:' || (c->>1), 0));
            SELECT version INTO sched_version FROM schedules WHERE id = c->>1 FOR UPDATE;
            ok := sched_version IS NOT DISTINCT FROM (c->>2)::bigint;
            found_row := to_jsonb(sched_version);
            sched_version := NULL;
        ELSE
            RAISE EXCEPTION 'loom_apply: unknown check %', c->>0;
        END CASE;
        -- A comparison with a NULL column (no lease, no row) does not hold.
        IF NOT COALESCE(ok, false) THEN
            RETURN jsonb_build_array(i, COALESCE(found_row, 'null'::jsonb));
        END IF;
    END LOOP;
    RETURN NULL;
END $$;

-- Applies `steps` at `now_ms`, adding what they claim or decide to `answer`.
CREATE OR REPLACE FUNCTION loom_steps(steps jsonb, now_ms bigint, answer jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    s jsonb;
    msg jsonb;
    at bigint;
    body text;
    u jsonb;
    u_last bigint;
    u_progress text;
    u_st text;
    u_term jsonb;
    k integer;
    wf text;
    claimed jsonb;
    ready jsonb;
    failed jsonb;
BEGIN
    FOR k IN 0 .. COALESCE(jsonb_array_length(steps), 0) - 1 LOOP
        s := steps->k;
        wf := s->>'wf';
        CASE s->>'s'
        WHEN 'w' THEN
            -- A statement per part present, or per pair of parts that come together. (One
            -- statement for every part, the absent ones empty, cost twice as much: each
            -- data-modifying part is set up with its table and indexes whether it writes or
            -- not.) No two parts touch the same row, so a pair may share a snapshot.
            IF s ? 'cw' THEN
                -- A new workflow: its row, its history's first events, its tasks.
                WITH w AS (
                    INSERT INTO workflows (id, name, version, status, input, created_at,
                                           updated_at, last_seq, parent_id)
                    VALUES (s->'cw'->>0, s->'cw'->>1, (s->'cw'->>2)::integer, 'running',
                            s->'cw'->>3, now_ms, now_ms, 1, s->'cw'->>4)
                ), e AS (
                    INSERT INTO events (workflow_id, seq, at, kind)
                    SELECT wf, (e->>0)::bigint, (e->>1)::bigint, e->>2
                    FROM jsonb_array_elements(s->'ev') AS e
                )
                INSERT INTO tasks (kind, workflow_id, visible_at, activity_id, name, input,
                                   options, attempt)
                SELECT (t->>0)::smallint, wf, (t->>2)::bigint + now_ms * (t->>1)::bigint,
                       (t->>3)::bigint, t->>4, t->>5, t->>6, (t->>7)::integer
                FROM jsonb_array_elements(s->'it') AS t;
            ELSIF s ? 'uw' THEN
                -- A workflow's row changes, with the events and the new tasks of the change, in
                -- one statement. The change's fields are read once, here; its three kinds get
                -- a statement each, so that none evaluates the others' columns.
                u := s->'uw';
                u_last := (u->>'last')::bigint;
                u_progress := u->>'progress';
                u_st := u->>'st';
                IF u_st = 'close' THEN
                    u_term := u->'term';
                    WITH e AS (
                        INSERT INTO events (workflow_id, seq, at, kind)
                        SELECT wf, (e->>0)::bigint, (e->>1)::bigint, e->>2
                        FROM jsonb_array_elements(s->'ev') AS e
                    )
                    UPDATE workflows SET last_seq = COALESCE(u_last, last_seq),
                        progress = COALESCE(u_progress, progress), updated_at = now_ms,
                        status = u_term->>0, output = u_term->>1, failure = u_term->>2,
                        pause_reason = NULL, closed_at = now_ms
                    WHERE id = wf;
                    IF s ? 'it' THEN
                        INSERT INTO tasks (kind, workflow_id, visible_at, activity_id, name,
                                           input, options, attempt)
                        SELECT (t->>0)::smallint, wf,
                               (t->>2)::bigint + now_ms * (t->>1)::bigint,
                               (t->>3)::bigint, t->>4, t->>5, t->>6, (t->>7)::integer
                        FROM jsonb_array_elements(s->'it') AS t;
                    END IF;
                ELSIF s ? 'it' THEN
                    WITH e AS (
                        INSERT INTO events (workflow_id, seq, at, kind)
                        SELECT wf, (e->>0)::bigint, (e->>1)::bigint, e->>2
                        FROM jsonb_array_elements(s->'ev') AS e
                    ), t AS (
                        INSERT INTO tasks (kind, workflow_id, visible_at, activity_id, name, input,
                                           options, attempt)
                        SELECT (t->>0)::smallint, wf, (t->>2)::bigint + now_ms * (t->>1)::bigint,
                               (t->>3)::bigint, t->>4, t->>5, t->>6, (t->>7)::integer
                        FROM jsonb_array_elements(s->'it') AS t
                    )
                    UPDATE workflows SET last_seq = COALESCE(u_last, last_seq),
                        progress = COALESCE(u_progress, progress), updated_at = now_ms,
                        status = CASE WHEN u_st = 'resume' AND status = 'paused'
                                      THEN 'running' ELSE status END,
                        pause_reason = CASE WHEN u_st = 'resume' AND status = 'paused'
                                            THEN NULL ELSE pause_reason END
                    WHERE id = wf;
                ELSE
                    WITH e AS (
                        INSERT INTO events (workflow_id, seq, at, kind)
                        SELECT wf, (e->>0)::bigint, (e->>1)::bigint, e->>2
                        FROM jsonb_array_elements(s->'ev') AS e
                    )
                    UPDATE workflows SET last_seq = COALESCE(u_last, last_seq),
                        progress = COALESCE(u_progress, progress), updated_at = now_ms,
                        status = CASE WHEN u_st = 'resume' AND status = 'paused'
                                      THEN 'running' ELSE status END,
                        pause_reason = CASE WHEN u_st = 'resume' AND status = 'paused'
                                            THEN NULL ELSE pause_reason END
                    WHERE id = wf;
                END IF;
            ELSE
                IF s ? 'ev' THEN
                    INSERT INTO events (workflow_id, seq, at, kind)
                    SELECT wf, (e->>0)::bigint, (e->>1)::bigint, e->>2
                    FROM jsonb_array_elements(s->'ev') AS e;
                END IF;
                IF s ? 'it' THEN
                    INSERT INTO tasks (kind, workflow_id, visible_at, activity_id, name, input,
                                       options, attempt)
                    SELECT (t->>0)::smallint, wf,
                           (t->>2)::bigint + now_ms * (t->>1)::bigint,
                           (t->>3)::bigint, t->>4, t->>5, t->>6, (t->>7)::integer
                    FROM jsonb_array_elements(s->'it') AS t;
                END IF;
            END IF;
            IF s ? 'dt' THEN
                -- `= ANY (array)`, not `IN (SELECT ...)`: an index lookup per id whatever the
                -- plan cache estimates for the array.
                DELETE FROM tasks
                WHERE id = ANY (translate((s->'dt')::text, '[]', '{}')::bigint[]);
            END IF;
            IF s ? 'rq' THEN
                UPDATE tasks SET attempt = attempt + 1, lease_expires_at = NULL,
                    lease_owner = NULL, deliveries = 0,
                    visible_at = (r->>2)::bigint + now_ms * (r->>1)::bigint
                FROM jsonb_array_elements(s->'rq') AS r
                WHERE tasks.id = (r->>0)::bigint;
            END IF;
            IF s ? 'rl' THEN
                UPDATE tasks SET lease_expires_at = NULL, lease_owner = NULL, deliveries = 0,
                    visible_at = (r->>2)::bigint + now_ms * (r->>1)::bigint,
                    affinity_owner = NULL, affinity_until = NULL
                FROM jsonb_array_elements(s->'rl') AS r
                WHERE tasks.id = (r->>0)::bigint;
            END IF;
            -- Messages, and the workflow task woken by them (a different row). A lone message
            -- (the usual case) is one VALUES row with its fields computed here: a set-returning
            -- function over the array costs a third more.
            IF s ? 'wk' THEN
                at := (s->'wk'->>1)::bigint + now_ms * (s->'wk'->>0)::bigint;
            END IF;
            IF jsonb_array_length(s->'po') = 1 THEN
                msg := s->'po'->0;
                body := CASE WHEN jsonb_typeof(msg->3) = 'number'
                    THEN jsonb_set((msg->>0)::jsonb, '{retry_at}',
                                   to_jsonb((msg->>4)::bigint + now_ms * (msg->>3)::bigint))::text
                    ELSE msg->>0 END;
                IF s ? 'wk' THEN
                    WITH m AS (
                        INSERT INTO messages (workflow_id, visible_at, kind, carry)
                        VALUES (wf, (msg->>2)::bigint + now_ms * (msg->>1)::bigint, body,
                                COALESCE((msg->>5)::boolean, false))
                    )
                    UPDATE tasks SET visible_at = LEAST(COALESCE(visible_at, at),
                        CASE WHEN lease_expires_at > now_ms THEN GREATEST(at, lease_expires_at)
                             ELSE at END)
                    WHERE kind = 0 AND workflow_id = wf;
                ELSE
                    INSERT INTO messages (workflow_id, visible_at, kind, carry)
                    VALUES (wf, (msg->>2)::bigint + now_ms * (msg->>1)::bigint, body,
                            COALESCE((msg->>5)::boolean, false));
                END IF;
            ELSE
                IF s ? 'po' THEN
                    INSERT INTO messages (workflow_id, visible_at, kind, carry)
                    SELECT wf, (m->>2)::bigint + now_ms * (m->>1)::bigint,
                        CASE WHEN jsonb_typeof(m->3) = 'number'
                            THEN jsonb_set((m->>0)::jsonb, '{retry_at}',
                                to_jsonb((m->>4)::bigint + now_ms * (m->>3)::bigint))::text
                            ELSE m->>0 END,
                        COALESCE((m->>5)::boolean, false)
                    FROM jsonb_array_elements(s->'po') AS m;
                END IF;
                IF s ? 'wk' THEN
                    UPDATE tasks SET visible_at = LEAST(COALESCE(visible_at, at),
                        CASE WHEN lease_expires_at > now_ms THEN GREATEST(at, lease_expires_at)
                             ELSE at END)
                    WHERE kind = 0 AND workflow_id = wf;
                END IF;
            END IF;
            -- Cancelled timers' messages and cancelled activities' tasks go before the task
            -- settles at the earliest remaining message.
            IF s ? 'up' THEN
                DELETE FROM messages WHERE workflow_id = wf
                  AND kind = ANY (ARRAY(SELECT jsonb_array_elements_text(s->'up')));
            END IF;
            IF s ? 'da' THEN
                DELETE FROM tasks WHERE workflow_id = wf AND kind = 1
                  AND activity_id = ANY (ARRAY(SELECT jsonb_array_elements_text(s->'da')::bigint));
            END IF;
            IF s ? 'cm' AND s ? 'st' THEN
                -- The consumed messages go, and the task settles at the earliest of the rest
                -- (the subquery sees the messages as they were, so the deleted ones are left
                -- out by id; messages posted by this step's earlier statements are seen).
                WITH d AS (
                    DELETE FROM messages WHERE workflow_id = wf
                      AND id = ANY (ARRAY(SELECT jsonb_array_elements_text(s->'cm')::bigint))
                    RETURNING id
                )
                UPDATE tasks SET lease_expires_at = NULL, lease_owner = NULL, deliveries = 0,
                    visible_at = (SELECT MIN(m.visible_at) FROM messages m
                                  WHERE m.workflow_id = wf AND m.id NOT IN (SELECT id FROM d)),
                    affinity_owner = s->'st'->>'o',
                    affinity_until = CASE WHEN s->'st' ? 'o'
                        THEN now_ms + LEAST((s->'st'->>'ms')::bigint,
                                            9223372036854775807 - GREATEST(now_ms, 0)) END
                WHERE kind = 0 AND workflow_id = wf;
            ELSIF s ? 'cm' THEN
                DELETE FROM messages WHERE workflow_id = wf
                  AND id = ANY (ARRAY(SELECT jsonb_array_elements_text(s->'cm')::bigint));
            ELSIF s ? 'st' THEN
                UPDATE tasks SET lease_expires_at = NULL, lease_owner = NULL, deliveries = 0,
                    visible_at = (SELECT MIN(m.visible_at) FROM messages m WHERE m.workflow_id = wf),
                    affinity_owner = s->'st'->>'o',
                    affinity_until = CASE WHEN s->'st' ? 'o'
                        THEN now_ms + LEAST((s->'st'->>'ms')::bigint,
                                            9223372036854775807 - GREATEST(now_ms, 0)) END
                WHERE kind = 0 AND workflow_id = wf;
            END IF;
            IF s ? 'dw' THEN
                DELETE FROM messages WHERE workflow_id = wf;
                -- Spelled out by kind: the two partial indexes by workflow, not a scan.
                DELETE FROM tasks
                WHERE (workflow_id = wf AND kind = 0) OR (workflow_id = wf AND kind = 1);
            END IF;
            IF s ? 'tg' THEN
                -- Tags set: each key's value replaced; the workflow's creation time copied, so
                -- that a listing by tag reads its index in order.
                INSERT INTO tags (workflow_id, key, value, text, num, created_at)
                SELECT wf, t->>0, t->>1, t->>2, (t->>3)::bigint,
                       COALESCE((SELECT created_at FROM workflows WHERE id = wf), now_ms)
                FROM jsonb_array_elements(s->'tg') AS t
                ON CONFLICT (workflow_id, key) DO UPDATE
                SET value = excluded.value, text = excluded.text, num = excluded.num;
            END IF;
            IF s ? 'lg' THEN
                INSERT INTO logs (workflow_id, seq, at, level, message)
                SELECT wf, (l->>0)::bigint, (l->>1)::bigint, l->>2, l->>3
                FROM jsonb_array_elements(s->'lg') AS l;
            END IF;
            IF s ? 'pa' THEN
                UPDATE workflows SET status = 'paused', pause_reason = p->>1, updated_at = now_ms
                FROM jsonb_array_elements(s->'pa') AS p
                WHERE workflows.id = (SELECT workflow_id FROM tasks WHERE tasks.id = (p->>0)::bigint);
            END IF;

        WHEN 'nr' THEN
            -- Continue-as-new: the history becomes the current run's, kept; the next run
            -- starts with its first event; the ended run's activity tasks and the messages
            -- that do not carry over (as the engine marked them when posting) go.
            INSERT INTO past_events (workflow_id, run, seq, at, kind)
            SELECT e.workflow_id, w.run, e.seq, e.at, e.kind
            FROM events e JOIN workflows w ON w.id = e.workflow_id
            WHERE e.workflow_id = wf;
            DELETE FROM events WHERE workflow_id = wf;
            INSERT INTO events (workflow_id, seq, at, kind)
            VALUES (wf, (s->'ev'->>0)::bigint, (s->'ev'->>1)::bigint, s->'ev'->>2);
            UPDATE workflows SET run = run + 1, version = (s->>'ver')::integer,
                input = s->>'input', last_seq = 1, progress = NULL, status = 'running',
                pause_reason = NULL, updated_at = now_ms
            WHERE id = wf;
            DELETE FROM tasks WHERE workflow_id = wf AND kind = 1;
            DELETE FROM messages WHERE workflow_id = wf AND NOT carry;

        WHEN 'rr' THEN
            -- A reset: the history becomes the current run's, kept; the new run's history is
            -- the prefix given; the row is running again; every task goes; the messages that
            -- do not carry over go, and the signals too unless they are kept.
            INSERT INTO past_events (workflow_id, run, seq, at, kind)
            SELECT e.workflow_id, w.run, e.seq, e.at, e.kind
            FROM events e JOIN workflows w ON w.id = e.workflow_id
            WHERE e.workflow_id = wf;
            DELETE FROM events WHERE workflow_id = wf;
            INSERT INTO events (workflow_id, seq, at, kind)
            SELECT wf, (e->>0)::bigint, (e->>1)::bigint, e->>2
            FROM jsonb_array_elements(s->'ev') AS e;
            UPDATE workflows SET run = run + 1, version = (s->>'ver')::integer,
                input = s->>'input', last_seq = (s->>'last')::bigint,
                progress = s->>'progress', status = 'running', pause_reason = NULL,
                closed_at = NULL, output = NULL, failure = NULL, updated_at = now_ms
            WHERE id = wf;
            DELETE FROM tasks WHERE workflow_id = wf;
            DELETE FROM messages WHERE workflow_id = wf
                AND (NOT carry OR (NOT (s->>'keep_signals')::boolean
                                   AND kind LIKE '{"type":"SignalReceived"%'));

        WHEN 'forget' THEN
            UPDATE tasks SET affinity_owner = NULL, affinity_until = NULL
            WHERE affinity_owner = s->>'owner';

        WHEN 'hold' THEN
            UPDATE workflows SET status = 'paused', pause_reason = s->>'reason',
                updated_at = now_ms
            WHERE id = wf;
            DELETE FROM tasks WHERE workflow_id = wf AND kind = 0;

        WHEN 'purge' THEN
            -- Terminal statuses only, whatever the filter: an open workflow is never purged,
            -- nor one with an open child (its id must not be taken again while the child may
            -- report to it). Rows another transaction holds are skipped, not waited for. The history,
            -- messages, tasks and logs are deleted by the statement too (migration 2 dropped
            -- their foreign keys); the earlier runs' histories cascade.
            WITH gone AS (
                DELETE FROM workflows WHERE id IN (
                    SELECT id FROM workflows
                    WHERE closed_at < now_ms - (s->>'older_ms')::bigint
                      AND status IN ('completed', 'failed', 'cancelled', 'terminated', 'timed_out')
                      AND (s->>'status' IS NULL OR status = s->>'status')
                      AND (s->>'name' IS NULL OR name = s->>'name')
                      AND NOT (name = ANY (ARRAY(SELECT jsonb_array_elements_text(s->'except'))))
                      AND NOT EXISTS (
                          SELECT 1 FROM workflows c WHERE c.parent_id = workflows.id
                            AND c.status NOT IN ('completed', 'failed', 'cancelled', 'terminated', 'timed_out'))
                    ORDER BY closed_at, id LIMIT (s->>'max')::bigint
                    FOR UPDATE SKIP LOCKED
                )
                RETURNING id, closed_at
            ), e AS (
                DELETE FROM events WHERE workflow_id IN (SELECT id FROM gone)
            ), m AS (
                DELETE FROM messages WHERE workflow_id IN (SELECT id FROM gone)
            ), t AS (
                DELETE FROM tasks WHERE workflow_id IN (SELECT id FROM gone)
            ), l AS (
                DELETE FROM logs WHERE workflow_id IN (SELECT id FROM gone)
            ), g AS (
                DELETE FROM tags WHERE workflow_id IN (SELECT id FROM gone)
            )
            SELECT jsonb_agg(id ORDER BY closed_at, id) INTO claimed FROM gone;
            answer := jsonb_set(answer, '{purged}',
                COALESCE(answer->'purged', '[]'::jsonb) || COALESCE(claimed, '[]'::jsonb));

        WHEN 'claim_a' THEN
            WITH picked AS (
                SELECT id, visible_at FROM tasks
                WHERE workflow_id = wf AND kind = 1 AND visible_at <= now_ms
                ORDER BY visible_at, id LIMIT (s->>'max')::bigint
                FOR UPDATE SKIP LOCKED
            ), c AS (
                UPDATE tasks t SET lease_token = t.lease_token + 1,
                    lease_expires_at = now_ms + (s->>'lease_ms')::bigint,
                    visible_at = now_ms + (s->>'lease_ms')::bigint,
                    lease_owner = s->>'owner', deliveries = t.deliveries + 1
                FROM picked WHERE t.id = picked.id
                RETURNING t.id, t.lease_token, t.lease_expires_at, t.deliveries,
                    t.activity_id, t.name, t.input, t.options, t.attempt,
                    picked.visible_at AS ready_at
            )
            SELECT jsonb_agg(jsonb_build_array(id, lease_token, lease_expires_at, deliveries,
                       activity_id, name, input, options, attempt) ORDER BY id),
                   jsonb_agg(ready_at ORDER BY id)
            INTO claimed, ready FROM c;
            answer := jsonb_set(answer, '{acts}',
                COALESCE(answer->'acts', '[]'::jsonb) || COALESCE(claimed, '[]'::jsonb));
            answer := jsonb_set(answer, '{acts_ready}',
                COALESCE(answer->'acts_ready', '[]'::jsonb) || COALESCE(ready, '[]'::jsonb));

        WHEN 'claim_w' THEN
            WITH p AS (
                SELECT id, visible_at FROM tasks
                WHERE kind = 0 AND workflow_id = wf AND visible_at <= now_ms
                  AND (affinity_owner IS NULL OR affinity_owner = s->>'owner'
                       OR affinity_until <= now_ms)
                FOR UPDATE
            ), c AS (
                UPDATE tasks t SET lease_token = t.lease_token + 1,
                    lease_expires_at = now_ms + (s->>'lease_ms')::bigint,
                    visible_at = now_ms + (s->>'lease_ms')::bigint,
                    lease_owner = s->>'owner', deliveries = t.deliveries + 1
                FROM p WHERE t.id = p.id
                RETURNING t.id, t.lease_token, t.lease_expires_at, t.deliveries,
                    p.visible_at AS ready_at
            )
            SELECT jsonb_build_array(c.id, c.lease_token, c.lease_expires_at, c.deliveries,
                       wf, w.name, w.last_seq,
                       (SELECT COALESCE(jsonb_agg(jsonb_build_array(m.id, m.visible_at, m.kind)
                                                  ORDER BY m.visible_at, m.id), '[]'::jsonb)
                        FROM messages m WHERE m.workflow_id = wf AND m.visible_at <= now_ms),
                       w.run),
                   to_jsonb(c.ready_at)
            INTO claimed, ready
            FROM c JOIN workflows w ON w.id = wf;
            IF claimed IS NOT NULL THEN
                answer := jsonb_set(answer, '{wfts}',
                    COALESCE(answer->'wfts', '[]'::jsonb) || jsonb_build_array(claimed));
                answer := jsonb_set(answer, '{wfts_ready}',
                    COALESCE(answer->'wfts_ready', '[]'::jsonb) || jsonb_build_array(ready));
            END IF;

        WHEN 'if' THEN
            failed := loom_checks(s->'all', now_ms);
            IF NOT answer ? 'decided' THEN
                answer := jsonb_set(answer, '{decided}', to_jsonb(failed IS NULL));
            END IF;
            answer := loom_steps(CASE WHEN failed IS NULL THEN s->'then' ELSE s->'else' END,
                                 now_ms, answer);
        WHEN 'sput' THEN
            -- A create inserts (two creates at once: the second fails on the key, and its
            -- check, evaluated again alone, reports the schedule the first created); a
            -- change updates the row its check locked.
            IF (s->>'new')::boolean THEN
                INSERT INTO schedules (id, version, wake_at, body)
                VALUES (s->>'id', (s->>'version')::bigint, (s->>'wake')::bigint, s->>'body');
            ELSE
                UPDATE schedules SET version = (s->>'version')::bigint,
                    wake_at = (s->>'wake')::bigint, body = s->>'body'
                WHERE id = s->>'id';
            END IF;
        WHEN 'sdel' THEN
            DELETE FROM schedules WHERE id = s->>'id';
        ELSE
            RAISE EXCEPTION 'loom_apply: unknown step %', s->>'s';
        END CASE;
    END LOOP;
    RETURN answer;
END $$;

CREATE OR REPLACE FUNCTION loom_apply(batch jsonb)
RETURNS TABLE (r_index integer, r_failed integer, r_found jsonb, r_now bigint, r_out jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    item jsonb;
    pos integer;
    failed jsonb;
    steps jsonb;
    c jsonb;
    done boolean;
    first text;
    created bigint;
BEGIN
    FOR item, pos IN
        SELECT b.value, b.ordinality::integer
        FROM jsonb_array_elements(batch) WITH ORDINALITY AS b
        ORDER BY COALESCE(b.value->>'wf',
                 (SELECT tk.workflow_id FROM tasks tk WHERE tk.id = (b.value->>'task')::bigint)),
                 b.ordinality
    LOOP
        r_index := pos;
        -- The database's clock, through the one function every statement reads it by.
        r_now := loom_now_ms();
        r_out := NULL;
        failed := NULL;
        steps := item->'steps';
        IF item->'checks'->0->>0 = 'leased' AND item->'checks'->1->>0 = 'attempt'
           AND jsonb_array_length(item->'checks') = 2 THEN
            -- An activity's commit: its checks are evaluated by the statement that ends or
            -- requeues the attempt; only if it matches no row are they read (for the answer).
            c := item->'checks'->1;
            IF steps->0->'dt' = jsonb_build_array(c->1) THEN
                DELETE FROM tasks
                WHERE id = (c->>1)::bigint AND lease_token = (item->'checks'->0->>2)::bigint
                  AND lease_expires_at > r_now AND kind = 1 AND workflow_id = c->>2
                  AND activity_id = (c->>3)::bigint AND attempt = (c->>4)::integer;
                done := FOUND;
                first := 'dt';
            ELSIF jsonb_array_length(steps->0->'rq') = 1 AND steps->0->'rq'->0->0 = c->1 THEN
                UPDATE tasks SET attempt = attempt + 1, lease_expires_at = NULL,
                    lease_owner = NULL, deliveries = 0,
                    visible_at = (steps->0->'rq'->0->>2)::bigint
                                 + r_now * (steps->0->'rq'->0->>1)::bigint
                WHERE id = (c->>1)::bigint AND lease_token = (item->'checks'->0->>2)::bigint
                  AND lease_expires_at > r_now AND kind = 1 AND workflow_id = c->>2
                  AND activity_id = (c->>3)::bigint AND attempt = (c->>4)::integer;
                done := FOUND;
                first := 'rq';
            ELSE
                done := false;
            END IF;
            IF done THEN
                steps := jsonb_set(steps, '{0}', (steps->0) - first);
            ELSE
                failed := loom_checks(item->'checks', r_now);
            END IF;
        ELSIF item->'checks'->0->>0 = 'absent' AND jsonb_array_length(item->'checks') = 1
              AND jsonb_array_length(steps) = 1 AND steps->0 ? 'cw' AND NOT steps->0 ? 'po'
              AND NOT steps->0 ? 'tg' THEN
            -- A start: its check is its own insert, which does nothing if the id is taken
            -- (a concurrent start of the same id waits on the key and then does nothing). A
            -- start with timeouts or tags takes the general way.
            c := steps->0;
            WITH w AS (
                INSERT INTO workflows (id, name, version, status, input, created_at,
                                       updated_at, last_seq, parent_id)
                VALUES (c->'cw'->>0, c->'cw'->>1, (c->'cw'->>2)::integer, 'running',
                        c->'cw'->>3, r_now, r_now, 1, c->'cw'->>4)
                ON CONFLICT (id) DO NOTHING
                RETURNING id
            ), e AS (
                INSERT INTO events (workflow_id, seq, at, kind)
                SELECT w.id, (e->>0)::bigint, (e->>1)::bigint, e->>2
                FROM w, jsonb_array_elements(c->'ev') AS e
            ), t AS (
                INSERT INTO tasks (kind, workflow_id, visible_at, activity_id, name, input,
                                   options, attempt)
                SELECT (t->>0)::smallint, w.id, (t->>2)::bigint + r_now * (t->>1)::bigint,
                       (t->>3)::bigint, t->>4, t->>5, t->>6, (t->>7)::integer
                FROM w, jsonb_array_elements(c->'it') AS t
            )
            SELECT count(*) INTO created FROM w;
            IF created = 0 THEN
                failed := jsonb_build_array(1, (SELECT jsonb_build_array(status, last_seq, parent_id,
                                                                         run)
                                                FROM workflows WHERE id = c->'cw'->>0));
            END IF;
            steps := '[]'::jsonb;
        ELSIF item->'checks'->1->>0 = 'wft_of' AND item->'checks'->2->>0 = 'open'
              AND item->'checks'->3->>0 = 'last' AND jsonb_array_length(item->'checks') = 4 THEN
            -- A workflow task's commit: its four checks in one statement that locks the task
            -- and the workflow; only if it matches no row are they read one by one.
            c := item->'checks';
            PERFORM 1 FROM tasks tk JOIN workflows wr ON wr.id = tk.workflow_id
            WHERE tk.id = (c->0->>1)::bigint AND tk.lease_token = (c->0->>2)::bigint
              AND tk.lease_expires_at > r_now AND tk.kind = 0 AND tk.workflow_id = c->1->>2
              AND wr.status NOT IN ('completed', 'failed', 'cancelled', 'terminated', 'timed_out')
              AND wr.last_seq = (c->3->>2)::bigint
            FOR UPDATE;
            IF NOT FOUND THEN
                failed := loom_checks(c, r_now);
            END IF;
        ELSE
            failed := loom_checks(item->'checks', r_now);
        END IF;
        r_failed := (failed->>0)::integer;
        r_found := failed->1;
        IF failed IS NULL THEN
            r_out := loom_steps(steps, r_now, '{}'::jsonb);
        END IF;
        RETURN NEXT;
    END LOOP;
END $$;
