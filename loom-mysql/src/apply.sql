-- The store engine's applier on the server, for MariaDB (10.6 and later): a port of
-- PostgreSQL's `loom_apply` (loom-postgres/src/functions.sql), speaking the same JSON protocol
-- (loom_storage::engine::wire), with the effect on rows of the client-side applier
-- (loom-mysql/src/apply.rs).
--
-- The file is a sequence of statements separated by lines holding only `$$`; each may run
-- again (DROP ... IF EXISTS, then CREATE). Load it with the session's utf8mb4 character set
-- and the writer's sql_mode: a routine keeps both from the session that created it.
--
-- `CALL loom_apply(now_ms, batch)` applies many callers' write sets (see
-- loom_storage::engine) in one statement, so one round trip and one log flush serve them all.
-- It decides nothing: each item carries the engine's checks and its writes, grouped by the
-- Rust side into steps (loom_storage::engine::wire). The checks are evaluated under row locks before anything is
-- written; an item whose check fails writes nothing and reports which check failed and what it
-- found (the Rust side turns that into the engine's error), and the other items still commit.
-- Items are applied in the order given (the caller sorts them by workflow id), and every item
-- locks a workflow's task before the workflow's row, so two batches lock in one order.
--
-- It neither starts nor ends a transaction: the caller runs START TRANSACTION; CALL; COMMIT,
-- on the writer connection (READ COMMITTED). Any SQL error is left to propagate: the caller
-- rolls back and applies the batch again from its own side, each write set under a
-- savepoint (commit.rs). The one error turned into an answer is a
-- duplicate key (1062) on the insert of a new workflow or of a new schedule, when it is the
-- item's first write: MySQL cannot lock a missing row without gap locks, so the check that the
-- id is free (`absent`, `sched` with a null version) only reads, and a concurrent create of
-- the same id meets this one on the key; the item then fails at that check, with the row the
-- other create wrote, as PostgreSQL's advisory lock would have had it fail.
--
-- now_ms: the store's clock for the whole call, in milliseconds; NULL reads the database's
--         clock once (as db.rs's NOW_MS does).
-- batch:  the items as bytes, each one's compact JSON (UTF-8) on a line of its own: items
--         joined by line feeds (compact JSON has none of its own).
-- Item:   {"wf"?, "task"?, "checks": [check], "steps": [step]}
-- Check:  ["leased", task, token] | ["wft_of", task, wf] | ["is_wft", task]
--         | ["attempt", task, wf, activity, attempt] | ["absent", wf] | ["open", wf]
--         | ["last", wf, seq] | ["run", wf, run] | ["paused", wf] | ["child_of", wf, parent]
--         | ["free", wf] | ["no_wft", wf] | ["quiet", wf]
--         | ["sched", id, version]   (version null: no schedule has the id)
-- Found:  a task [workflow, kind, activity_id, attempt, token, lease_expires_at],
--         a workflow [status, last_seq, parent, run], the earliest message time, or a
--         schedule's version; null for no row.
-- Step:   {"s":"w", "wf", parts...}   a run of primitive writes, by table:
--           "cw" [id, name, version, input, parent]   a new workflow's row
--           "ev" [[seq, at, kind]]   events appended
--           "uw" {"last", "progress", "st": "keep"|"resume"|"close", "term": [status, output,
--                 failure]}   the workflow's row changed
--           "it" [[kind, rel, ms, activity_id, name, input, options, attempt]]   tasks inserted
--           "dt" [task]   tasks deleted; "rq" [[task, rel, ms]] requeued; "rl" [[task, rel, ms]]
--                 released
--           "po" [[kind, rel, ms, retry_rel, retry_ms, carry]]   messages posted ("carry" is
--                 not stored: MySQL's messages have no such column, see "nr")
--           "wk" [rel, ms]   the workflow task woken
--           "up" [kind]   messages withdrawn by kind; "da" [activity_id]   activity tasks
--                 deleted; "cm" [message]   messages consumed
--           "st" true | {"o": owner, "ms": window}   the workflow task settled at its earliest
--                 message (with an affinity)
--           "dw" true   the workflow's tasks and messages deleted
--           "tg" [[key, value, text, num]]   tags set; "lg" [[seq, at, level, message]]   logs
--           "pa" [[task, reason]]   the task's workflow paused
--         applied in that order (so "up", "da" and "cm" come after posts, and "st" after them)
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
-- A time is [relative, ms]: ms after now when relative is 1 (saturating at the largest
-- BIGINT), ms itself when 0; the expression is written out where it is used, since a stored
-- function would need SUPER (or log_bin_trust_function_creators) on a server that keeps a
-- binary log, and procedures do not.
-- Answer: one result set of one row and one column, a JSON array with an element per item, in
-- the batch's order: [r_index, r_failed, r_found, r_now, r_out], where r_index is the item's
-- position (from 1), r_failed the failed check's position (from 1) or null, r_found what was
-- found there (null when nothing failed), r_now the clock used, and r_out null for a failed
-- item, else
--   {"acts": [[task, token, expires, deliveries, activity_id, name, input, options, attempt]],
--    "acts_ready": [ready_at, one per element of acts],
--    "wfts": [[task, token, expires, deliveries, workflow, name, last_seq, [[id, at, kind]], run]],
--    "wfts_ready": [ready_at, one per element of wfts],
--    "decided": bool (whether the conditions of the first "if" applied held),
--    "purged": [workflow ids]}
-- each key present only when a step of its kind ran (as PostgreSQL's answer has it; a
-- "claim_w" that claims nothing adds no key, a "claim_a" or "purge" that finds nothing adds
-- an empty list); {} when nothing was claimed or decided.
--
-- Payloads travel as JSON strings and are stored as their text, byte for byte; they are read
-- by JSON_TABLE columns or JSON_VALUE (neither truncates in MariaDB) and go back out through
-- JSON_ARRAY / JSON_QUOTE of CONVERT(column USING utf8mb4), as JSON strings.
-- Every local variable is named v_ or p_ something: in a routine a variable hides a column of
-- the same name. A numeric variable goes into JSON_ARRAY as `v + 0`: MariaDB 10.11 renders a
-- bare integer variable there as a JSON string once the routine has used it in a SET.
DROP PROCEDURE IF EXISTS loom_apply
$$
DROP PROCEDURE IF EXISTS loom_steps
$$
DROP PROCEDURE IF EXISTS loom_checks
$$
-- The first check of p_checks that fails at p_now: its position (from 1) in o_failed and what
-- it found in o_found (JSON text); both NULL if all hold. Rows are locked as they are read.
-- Consecutive checks of one row read it once.
CREATE PROCEDURE loom_checks(IN p_checks LONGTEXT CHARACTER SET utf8mb4, IN p_now BIGINT,
                             OUT o_failed INT, OUT o_found LONGTEXT CHARACTER SET utf8mb4)
MODIFIES SQL DATA
BEGIN
    DECLARE v_n INT DEFAULT COALESCE(JSON_LENGTH(p_checks), 0);
    DECLARE v_k INT DEFAULT 0;
    DECLARE v_c LONGTEXT CHARACTER SET utf8mb4;
    DECLARE v_ck VARCHAR(16) CHARACTER SET utf8mb4;
    DECLARE v_next VARCHAR(16) CHARACTER SET utf8mb4;
    DECLARE v_arg VARBINARY(1024);
    DECLARE v_ok BOOLEAN;
    DECLARE v_found_row LONGTEXT CHARACTER SET utf8mb4;
    DECLARE v_nf BOOLEAN DEFAULT FALSE;
    -- The task last read (t_), the workflow last read (w_).
    DECLARE v_t_id BIGINT DEFAULT NULL;
    DECLARE v_t_found BOOLEAN DEFAULT FALSE;
    DECLARE v_t_wf VARBINARY(1024);
    DECLARE v_t_kind BIGINT;
    DECLARE v_t_act BIGINT;
    DECLARE v_t_attempt BIGINT;
    DECLARE v_t_token BIGINT;
    DECLARE v_t_exp BIGINT;
    DECLARE v_w_id VARBINARY(1024) DEFAULT NULL;
    DECLARE v_w_found BOOLEAN DEFAULT FALSE;
    DECLARE v_w_status VARBINARY(16);
    DECLARE v_w_last BIGINT;
    DECLARE v_w_parent VARBINARY(1024);
    DECLARE v_w_run BIGINT;
    -- The workflow whose task the checks have locked, if any.
    DECLARE v_locked_wft VARBINARY(1024) DEFAULT NULL;
    DECLARE v_earliest BIGINT;
    DECLARE v_sched BIGINT;
    DECLARE v_dummy BIGINT;
    DECLARE CONTINUE HANDLER FOR NOT FOUND SET v_nf = TRUE;

    SET o_failed = NULL, o_found = NULL;
    checks: WHILE v_k < v_n DO
        SET v_c = JSON_EXTRACT(p_checks, CONCAT('$[', v_k, ']'));
        SET v_ck = JSON_VALUE(v_c, '$[0]');
        SET v_found_row = NULL;
        CASE
        WHEN v_ck IN ('leased', 'wft_of', 'is_wft', 'attempt') THEN
            IF NOT (v_t_id <=> CAST(JSON_VALUE(v_c, '$[1]') AS SIGNED)) THEN
                SET v_t_id = CAST(JSON_VALUE(v_c, '$[1]') AS SIGNED);
                SET v_t_found = FALSE;
                SET v_next = JSON_VALUE(p_checks, CONCAT('$[', v_k + 1, '][0]'));
                IF v_next = 'wft_of' THEN
                    -- A workflow task's commit: the task and its workflow, locked in that
                    -- order by one statement, for the checks of both that follow.
                    SET v_nf = FALSE;
                    SELECT tk.workflow_id, tk.kind, tk.activity_id, tk.attempt, tk.lease_token,
                           tk.lease_expires_at, wr.status, wr.last_seq, wr.parent_id, wr.run
                    INTO v_t_wf, v_t_kind, v_t_act, v_t_attempt, v_t_token, v_t_exp,
                         v_w_status, v_w_last, v_w_parent, v_w_run
                    FROM tasks tk STRAIGHT_JOIN workflows wr ON wr.id = tk.workflow_id
                    WHERE tk.id = v_t_id AND tk.kind = 0 FOR UPDATE;
                    IF NOT v_nf THEN
                        SET v_t_found = TRUE;
                        SET v_locked_wft = v_t_wf;
                        SET v_w_id = v_t_wf;
                        SET v_w_found = TRUE;
                    END IF;
                END IF;
                IF NOT v_t_found THEN
                    SET v_nf = FALSE;
                    SELECT workflow_id, kind, activity_id, attempt, lease_token, lease_expires_at
                    INTO v_t_wf, v_t_kind, v_t_act, v_t_attempt, v_t_token, v_t_exp
                    FROM tasks WHERE id = v_t_id FOR UPDATE;
                    SET v_t_found = NOT v_nf;
                    IF v_t_found AND v_t_kind = 0 THEN
                        SET v_locked_wft = v_t_wf;
                    END IF;
                END IF;
            END IF;
            SET v_ok = v_t_found AND CASE v_ck
                WHEN 'leased' THEN v_t_token = CAST(JSON_VALUE(v_c, '$[2]') AS SIGNED)
                                   AND v_t_exp > p_now
                WHEN 'wft_of' THEN v_t_kind = 0 AND v_t_wf = CAST(JSON_VALUE(v_c, '$[2]') AS BINARY)
                WHEN 'is_wft' THEN v_t_kind = 0
                ELSE v_t_kind = 1 AND v_t_wf = CAST(JSON_VALUE(v_c, '$[2]') AS BINARY)
                     AND v_t_act = CAST(JSON_VALUE(v_c, '$[3]') AS SIGNED)
                     AND v_t_attempt = CAST(JSON_VALUE(v_c, '$[4]') AS SIGNED)
            END;
            IF NOT COALESCE(v_ok, FALSE) AND v_t_found THEN
                SET v_found_row = JSON_ARRAY(CONVERT(v_t_wf USING utf8mb4), v_t_kind + 0,
                                             v_t_act + 0, v_t_attempt + 0,
                                             v_t_token + 0, v_t_exp + 0);
            END IF;
        WHEN v_ck IN ('absent', 'open', 'last', 'run', 'paused', 'child_of') THEN
            SET v_arg = JSON_VALUE(v_c, '$[1]');
            IF NOT (v_w_id <=> v_arg) THEN
                SET v_w_id = v_arg;
                -- The workflow's task before the workflow: the order every item takes. (For
                -- `absent` too, as apply.rs reads it: a missing row locks nothing, and the
                -- insert that follows meets a concurrent create on the key.)
                IF NOT (v_locked_wft <=> v_w_id) THEN
                    SET v_nf = FALSE;
                    SELECT id INTO v_dummy FROM tasks WHERE wft_of = v_w_id FOR UPDATE;
                    SET v_locked_wft = v_w_id;
                END IF;
                SET v_nf = FALSE;
                SELECT status, last_seq, parent_id, run
                INTO v_w_status, v_w_last, v_w_parent, v_w_run
                FROM workflows WHERE id = v_w_id FOR UPDATE;
                SET v_w_found = NOT v_nf;
            END IF;
            SET v_ok = CASE v_ck
                WHEN 'absent' THEN NOT v_w_found
                WHEN 'open' THEN v_w_found
                    AND v_w_status NOT IN ('completed', 'failed', 'cancelled', 'terminated', 'timed_out')
                WHEN 'child_of' THEN v_w_found
                    AND v_w_status NOT IN ('completed', 'failed', 'cancelled', 'terminated', 'timed_out')
                    AND v_w_parent = CAST(JSON_VALUE(v_c, '$[2]') AS BINARY)
                WHEN 'run' THEN v_w_found AND v_w_run = CAST(JSON_VALUE(v_c, '$[2]') AS SIGNED)
                WHEN 'paused' THEN v_w_found AND v_w_status = 'paused'
                ELSE v_w_found AND v_w_last = CAST(JSON_VALUE(v_c, '$[2]') AS SIGNED)
            END;
            IF NOT COALESCE(v_ok, FALSE) AND v_w_found THEN
                SET v_found_row = JSON_ARRAY(CONVERT(v_w_status USING utf8mb4), v_w_last + 0,
                                             CONVERT(v_w_parent USING utf8mb4), v_w_run + 0);
            END IF;
        WHEN v_ck IN ('free', 'no_wft') THEN
            SET v_arg = JSON_VALUE(v_c, '$[1]');
            SET v_nf = FALSE;
            SELECT workflow_id, kind, activity_id, attempt, lease_token, lease_expires_at
            INTO v_t_wf, v_t_kind, v_t_act, v_t_attempt, v_t_token, v_t_exp
            FROM tasks WHERE wft_of = v_arg FOR UPDATE;
            SET v_t_found = NOT v_nf;
            SET v_t_id = NULL;
            IF v_t_found THEN
                SET v_locked_wft = v_arg;
            END IF;
            SET v_ok = CASE v_ck
                WHEN 'no_wft' THEN NOT v_t_found
                ELSE v_t_found AND (v_t_exp IS NULL OR v_t_exp <= p_now)
            END;
            IF NOT COALESCE(v_ok, FALSE) AND v_t_found THEN
                SET v_found_row = JSON_ARRAY(CONVERT(v_t_wf USING utf8mb4), v_t_kind + 0,
                                             v_t_act + 0, v_t_attempt + 0,
                                             v_t_token + 0, v_t_exp + 0);
            END IF;
        WHEN v_ck = 'quiet' THEN
            SET v_earliest = NULL;
            SELECT MIN(visible_at) INTO v_earliest FROM messages
            WHERE workflow_id = CAST(JSON_VALUE(v_c, '$[1]') AS BINARY);
            SET v_ok = v_earliest IS NULL OR v_earliest > p_now;
            SET v_found_row = CAST(v_earliest AS CHAR);
        WHEN v_ck = 'sched' THEN
            -- A missing row cannot be locked: a new schedule's insert meets a concurrent
            -- create on the key (see loom_steps).
            SET v_sched = NULL;
            SELECT version INTO v_sched FROM schedules
            WHERE id = CAST(JSON_VALUE(v_c, '$[1]') AS BINARY) FOR UPDATE;
            SET v_ok = v_sched <=> CAST(JSON_VALUE(v_c, '$[2]') AS SIGNED);
            SET v_found_row = CAST(v_sched AS CHAR);
        ELSE
            SET v_found_row = CONCAT('loom_apply: unknown check ', COALESCE(v_ck, 'null'));
            SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = v_found_row;
        END CASE;
        -- A comparison with a NULL column (no lease, no row) does not hold.
        IF NOT COALESCE(v_ok, FALSE) THEN
            SET o_failed = v_k + 1, o_found = COALESCE(v_found_row, 'null');
            LEAVE checks;
        END IF;
        SET v_k = v_k + 1;
    END WHILE;
END
$$
-- Applies p_steps at p_now. o_out: what they claimed or decided, a JSON object. p_checks are
-- the item's checks and p_wrote whether the item has written already: an insert of a new
-- workflow or schedule that is the item's first write and meets an existing row on the key
-- makes the item fail at the check that found the id free (o_failed, o_found; o_out NULL);
-- any other duplicate key is an error. "if" steps are not a recursive call (MariaDB's
-- max_sp_recursion_depth is 0 by default): the branch chosen is put before the steps left.
CREATE PROCEDURE loom_steps(IN p_steps LONGTEXT CHARACTER SET utf8mb4, IN p_now BIGINT,
                            IN p_checks LONGTEXT CHARACTER SET utf8mb4, IN p_wrote BOOLEAN,
                            OUT o_out LONGTEXT CHARACTER SET utf8mb4, OUT o_failed INT,
                            OUT o_found LONGTEXT CHARACTER SET utf8mb4)
MODIFIES SQL DATA
BEGIN
    DECLARE v_queue LONGTEXT CHARACTER SET utf8mb4 DEFAULT COALESCE(p_steps, '[]');
    DECLARE v_s LONGTEXT CHARACTER SET utf8mb4;
    DECLARE v_keys LONGTEXT CHARACTER SET utf8mb4;
    DECLARE v_part LONGTEXT CHARACTER SET utf8mb4;
    DECLARE v_sk VARCHAR(16) CHARACTER SET utf8mb4;
    DECLARE v_wf VARBINARY(1024);
    DECLARE v_wrote BOOLEAN DEFAULT COALESCE(p_wrote, FALSE);
    DECLARE v_nf BOOLEAN DEFAULT FALSE;
    DECLARE v_dup BOOLEAN DEFAULT FALSE;
    DECLARE v_guard INT;
    DECLARE v_i INT;
    DECLARE v_n INT;
    DECLARE v_j INT;
    DECLARE v_id BIGINT;
    DECLARE v_key VARBINARY(1024);
    DECLARE v_blob LONGBLOB;
    DECLARE v_at BIGINT;
    DECLARE v_owner VARBINARY(1024);
    DECLARE v_ms BIGINT;
    DECLARE v_max BIGINT;
    DECLARE v_exp BIGINT;
    -- Fields of a step read by JSON_TABLE.
    DECLARE v_f_last BIGINT;
    DECLARE v_f_progress LONGTEXT CHARACTER SET utf8mb4;
    DECLARE v_f_st VARCHAR(16) CHARACTER SET utf8mb4;
    DECLARE v_f_status VARCHAR(16) CHARACTER SET utf8mb4;
    DECLARE v_f_output LONGTEXT CHARACTER SET utf8mb4;
    DECLARE v_f_failure LONGTEXT CHARACTER SET utf8mb4;
    DECLARE v_f_ver BIGINT;
    DECLARE v_f_input LONGTEXT CHARACTER SET utf8mb4;
    DECLARE v_f_seq BIGINT;
    DECLARE v_f_at BIGINT;
    DECLARE v_f_kind LONGTEXT CHARACTER SET utf8mb4;
    DECLARE v_f_keep VARCHAR(8) CHARACTER SET utf8mb4;
    DECLARE v_f_new VARCHAR(8) CHARACTER SET utf8mb4;
    DECLARE v_f_wake BIGINT;
    DECLARE v_f_body LONGTEXT CHARACTER SET utf8mb4;
    DECLARE v_f_status_filter VARBINARY(16);
    DECLARE v_f_name VARBINARY(1024);
    DECLARE v_f_except LONGTEXT CHARACTER SET utf8mb4;
    -- A claimed row.
    DECLARE v_c_id BIGINT;
    DECLARE v_c_vis BIGINT;
    DECLARE v_c_token BIGINT;
    DECLARE v_c_del BIGINT;
    DECLARE v_c_act BIGINT;
    DECLARE v_c_name LONGBLOB;
    DECLARE v_c_input LONGBLOB;
    DECLARE v_c_options LONGBLOB;
    DECLARE v_c_attempt BIGINT;
    DECLARE v_c_ids LONGTEXT CHARACTER SET utf8mb4;
    DECLARE v_w_name LONGBLOB;
    DECLARE v_w_last BIGINT;
    DECLARE v_w_run BIGINT;
    DECLARE v_msgs LONGTEXT CHARACTER SET utf8mb4;
    DECLARE v_failed INT;
    DECLARE v_found LONGTEXT CHARACTER SET utf8mb4;
    -- The answer's keys: NULL while absent, else the elements so far, comma-separated.
    DECLARE v_acts LONGTEXT CHARACTER SET utf8mb4 DEFAULT NULL;
    DECLARE v_acts_ready LONGTEXT CHARACTER SET utf8mb4 DEFAULT NULL;
    DECLARE v_wfts LONGTEXT CHARACTER SET utf8mb4 DEFAULT NULL;
    DECLARE v_wfts_ready LONGTEXT CHARACTER SET utf8mb4 DEFAULT NULL;
    DECLARE v_purged LONGTEXT CHARACTER SET utf8mb4 DEFAULT NULL;
    DECLARE v_decided VARCHAR(5) CHARACTER SET utf8mb4 DEFAULT NULL;
    DECLARE CONTINUE HANDLER FOR NOT FOUND SET v_nf = TRUE;

    SET o_out = NULL, o_failed = NULL, o_found = NULL;
    steps: WHILE JSON_LENGTH(v_queue) > 0 DO
        SET v_s = JSON_EXTRACT(v_queue, '$[0]');
        SET v_queue = JSON_REMOVE(v_queue, '$[0]');
        SET v_sk = JSON_VALUE(v_s, '$.s');
        SET v_wf = JSON_VALUE(v_s, '$.wf');
        CASE v_sk
        WHEN 'w' THEN
            -- A statement per part present (its key among the step's keys).
            SET v_keys = JSON_KEYS(v_s);
            IF LOCATE('"cw"', v_keys) > 0 THEN
                -- A new workflow's row. As the item's first write, its insert is the check
                -- that the id is free (the `absent` check naming it): see the header.
                SET v_guard = NULL;
                IF NOT v_wrote THEN
                    SET v_key = JSON_VALUE(v_s, '$.cw[0]');
                    SET v_n = COALESCE(JSON_LENGTH(p_checks), 0), v_i = 0;
                    WHILE v_i < v_n AND v_guard IS NULL DO
                        IF JSON_VALUE(p_checks, CONCAT('$[', v_i, '][0]')) = 'absent'
                           AND CAST(JSON_VALUE(p_checks, CONCAT('$[', v_i, '][1]')) AS BINARY) = v_key THEN
                            SET v_guard = v_i + 1;
                        END IF;
                        SET v_i = v_i + 1;
                    END WHILE;
                END IF;
                BEGIN
                    DECLARE EXIT HANDLER FOR 1062
                    BEGIN
                        IF v_guard IS NULL THEN
                            RESIGNAL;
                        END IF;
                        SET v_dup = TRUE;
                    END;
                    INSERT INTO workflows (id, name, version, status, input, created_at,
                                           updated_at, last_seq, parent_id)
                    SELECT j.id, j.name, j.version, 'running', j.input, p_now, p_now, 1, j.parent
                    FROM JSON_TABLE(v_s, '$.cw' COLUMNS (
                        id LONGTEXT CHARACTER SET utf8mb4 PATH '$[0]',
                        name LONGTEXT CHARACTER SET utf8mb4 PATH '$[1]',
                        version BIGINT PATH '$[2]',
                        input LONGTEXT CHARACTER SET utf8mb4 PATH '$[3]',
                        parent LONGTEXT CHARACTER SET utf8mb4 PATH '$[4]')) j;
                END;
                IF v_dup THEN
                    SET v_nf = FALSE, v_found = NULL;
                    SELECT JSON_ARRAY(CONVERT(status USING utf8mb4), last_seq,
                                      CONVERT(parent_id USING utf8mb4), run)
                    INTO v_found FROM workflows WHERE id = v_key;
                    SET o_failed = v_guard, o_found = COALESCE(v_found, 'null');
                    LEAVE steps;
                END IF;
            END IF;
            IF LOCATE('"ev"', v_keys) > 0 THEN
                INSERT INTO events (workflow_id, seq, at, kind)
                SELECT v_wf, j.seq, j.at, j.kind
                FROM JSON_TABLE(v_s, '$.ev[*]' COLUMNS (
                    seq BIGINT PATH '$[0]',
                    at BIGINT PATH '$[1]',
                    kind LONGTEXT CHARACTER SET utf8mb4 PATH '$[2]')) j;
            END IF;
            IF LOCATE('"uw"', v_keys) > 0 THEN
                -- The workflow's row changes. `status` is set last: MySQL evaluates SET
                -- assignments left to right, and the pause reason's test reads the status
                -- before it changes.
                SELECT j.last, j.progress, j.st, j.status, j.output, j.failure
                INTO v_f_last, v_f_progress, v_f_st, v_f_status, v_f_output, v_f_failure
                FROM JSON_TABLE(v_s, '$.uw' COLUMNS (
                    last BIGINT PATH '$.last',
                    progress LONGTEXT CHARACTER SET utf8mb4 PATH '$.progress',
                    st VARCHAR(16) CHARACTER SET utf8mb4 PATH '$.st',
                    status VARCHAR(16) CHARACTER SET utf8mb4 PATH '$.term[0]',
                    output LONGTEXT CHARACTER SET utf8mb4 PATH '$.term[1]',
                    failure LONGTEXT CHARACTER SET utf8mb4 PATH '$.term[2]')) j;
                IF v_f_st = 'close' THEN
                    UPDATE workflows SET last_seq = COALESCE(v_f_last, last_seq),
                        progress = COALESCE(v_f_progress, progress), updated_at = p_now,
                        closed_at = p_now, status = v_f_status, output = v_f_output,
                        failure = v_f_failure, pause_reason = NULL
                    WHERE id = v_wf;
                ELSEIF v_f_st = 'resume' THEN
                    UPDATE workflows SET last_seq = COALESCE(v_f_last, last_seq),
                        progress = COALESCE(v_f_progress, progress), updated_at = p_now,
                        pause_reason = CASE WHEN status = 'paused' THEN NULL ELSE pause_reason END,
                        status = CASE WHEN status = 'paused' THEN 'running' ELSE status END
                    WHERE id = v_wf;
                ELSE
                    UPDATE workflows SET last_seq = COALESCE(v_f_last, last_seq),
                        progress = COALESCE(v_f_progress, progress), updated_at = p_now
                    WHERE id = v_wf;
                END IF;
            END IF;
            IF LOCATE('"it"', v_keys) > 0 THEN
                INSERT INTO tasks (kind, workflow_id, visible_at, activity_id, name, input,
                                   options, attempt)
                SELECT j.kind, v_wf, (CASE WHEN j.rel = 1 THEN CASE WHEN j.ms > 0 AND p_now > 0 AND j.ms > 9223372036854775807 - p_now THEN 9223372036854775807 ELSE p_now + j.ms END ELSE j.ms END), j.act, j.name, j.input,
                       j.options, j.attempt
                FROM JSON_TABLE(v_s, '$.it[*]' COLUMNS (
                    o FOR ORDINALITY,
                    kind BIGINT PATH '$[0]',
                    rel BIGINT PATH '$[1]',
                    ms BIGINT PATH '$[2]',
                    act BIGINT PATH '$[3]',
                    name LONGTEXT CHARACTER SET utf8mb4 PATH '$[4]',
                    input LONGTEXT CHARACTER SET utf8mb4 PATH '$[5]',
                    options LONGTEXT CHARACTER SET utf8mb4 PATH '$[6]',
                    attempt BIGINT PATH '$[7]')) j
                ORDER BY j.o;
            END IF;
            -- Tasks by id, each part one statement over its list (JSON_TABLE reads the list
            -- once; a read of each element by its index would parse it from the start).
            IF LOCATE('"dt"', v_keys) > 0 THEN
                DELETE tk FROM tasks tk
                JOIN JSON_TABLE(v_s, '$.dt[*]' COLUMNS (id BIGINT PATH '$')) j ON tk.id = j.id;
            END IF;
            IF LOCATE('"rq"', v_keys) > 0 THEN
                UPDATE tasks tk
                JOIN JSON_TABLE(v_s, '$.rq[*]' COLUMNS (
                    id BIGINT PATH '$[0]', rel BIGINT PATH '$[1]', ms BIGINT PATH '$[2]')) j
                  ON tk.id = j.id
                SET tk.attempt = tk.attempt + 1, tk.lease_expires_at = NULL,
                    tk.lease_owner = NULL, tk.deliveries = 0,
                    tk.visible_at = CASE WHEN j.rel = 1 THEN CASE WHEN j.ms > 0 AND p_now > 0 AND j.ms > 9223372036854775807 - p_now THEN 9223372036854775807 ELSE p_now + j.ms END ELSE j.ms END;
            END IF;
            IF LOCATE('"rl"', v_keys) > 0 THEN
                UPDATE tasks tk
                JOIN JSON_TABLE(v_s, '$.rl[*]' COLUMNS (
                    id BIGINT PATH '$[0]', rel BIGINT PATH '$[1]', ms BIGINT PATH '$[2]')) j
                  ON tk.id = j.id
                SET tk.lease_expires_at = NULL, tk.lease_owner = NULL, tk.deliveries = 0,
                    tk.visible_at = CASE WHEN j.rel = 1 THEN CASE WHEN j.ms > 0 AND p_now > 0 AND j.ms > 9223372036854775807 - p_now THEN 9223372036854775807 ELSE p_now + j.ms END ELSE j.ms END,
                    tk.affinity_owner = NULL, tk.affinity_until = NULL;
            END IF;
            -- Messages (a retry's time written into its kind), then the workflow task woken
            -- by them.
            IF LOCATE('"po"', v_keys) > 0 THEN
                INSERT INTO messages (workflow_id, visible_at, kind)
                SELECT v_wf, (CASE WHEN j.rel = 1 THEN CASE WHEN j.ms > 0 AND p_now > 0 AND j.ms > 9223372036854775807 - p_now THEN 9223372036854775807 ELSE p_now + j.ms END ELSE j.ms END),
                       CASE WHEN j.rrel IS NULL THEN j.kind
                            ELSE JSON_SET(j.kind, '$.retry_at', (CASE WHEN j.rrel = 1 THEN CASE WHEN j.rms > 0 AND p_now > 0 AND j.rms > 9223372036854775807 - p_now THEN 9223372036854775807 ELSE p_now + j.rms END ELSE j.rms END)) END
                FROM JSON_TABLE(v_s, '$.po[*]' COLUMNS (
                    o FOR ORDINALITY,
                    kind LONGTEXT CHARACTER SET utf8mb4 PATH '$[0]',
                    rel BIGINT PATH '$[1]',
                    ms BIGINT PATH '$[2]',
                    rrel BIGINT PATH '$[3]',
                    rms BIGINT PATH '$[4]')) j
                ORDER BY j.o;
            END IF;
            IF LOCATE('"wk"', v_keys) > 0 THEN
                SET v_at = (CASE WHEN CAST(JSON_VALUE(v_s, '$.wk[0]') AS SIGNED) = 1 THEN CASE WHEN CAST(JSON_VALUE(v_s, '$.wk[1]') AS SIGNED) > 0 AND p_now > 0 AND CAST(JSON_VALUE(v_s, '$.wk[1]') AS SIGNED) > 9223372036854775807 - p_now THEN 9223372036854775807 ELSE p_now + CAST(JSON_VALUE(v_s, '$.wk[1]') AS SIGNED) END ELSE CAST(JSON_VALUE(v_s, '$.wk[1]') AS SIGNED) END);
                UPDATE tasks SET visible_at = LEAST(COALESCE(visible_at, v_at),
                    CASE WHEN lease_expires_at > p_now THEN GREATEST(v_at, lease_expires_at)
                         ELSE v_at END)
                WHERE wft_of = v_wf;
            END IF;
            -- Cancelled timers' messages and cancelled activities' tasks go before the task
            -- settles at the earliest remaining message.
            IF LOCATE('"up"', v_keys) > 0 THEN
                SET v_part = JSON_EXTRACT(v_s, '$.up');
                SET v_n = JSON_LENGTH(v_part), v_i = 0;
                WHILE v_i < v_n DO
                    SET v_blob = JSON_UNQUOTE(JSON_EXTRACT(v_part, CONCAT('$[', v_i, ']')));
                    DELETE FROM messages WHERE workflow_id = v_wf AND kind = v_blob;
                    SET v_i = v_i + 1;
                END WHILE;
            END IF;
            IF LOCATE('"da"', v_keys) > 0 THEN
                DELETE tk FROM tasks tk
                JOIN JSON_TABLE(v_s, '$.da[*]' COLUMNS (act BIGINT PATH '$')) j
                  ON tk.workflow_id = v_wf AND tk.kind = 1 AND tk.activity_id = j.act;
            END IF;
            IF LOCATE('"cm"', v_keys) > 0 THEN
                DELETE m FROM messages m
                JOIN JSON_TABLE(v_s, '$.cm[*]' COLUMNS (id BIGINT PATH '$')) j
                  ON m.id = j.id AND m.workflow_id = v_wf;
            END IF;
            IF LOCATE('"st"', v_keys) > 0 THEN
                -- {"o", "ms"}: an affinity; true: none.
                SET v_owner = JSON_VALUE(v_s, '$.st.o');
                SET v_ms = JSON_VALUE(v_s, '$.st.ms');
                UPDATE tasks SET lease_expires_at = NULL, lease_owner = NULL, deliveries = 0,
                    visible_at = (SELECT MIN(m.visible_at) FROM messages m
                                  WHERE m.workflow_id = v_wf),
                    affinity_owner = v_owner,
                    affinity_until = CASE WHEN v_owner IS NOT NULL
                                          THEN (CASE WHEN CAST(v_ms AS SIGNED) > 0 AND p_now > 0 AND CAST(v_ms AS SIGNED) > 9223372036854775807 - p_now THEN 9223372036854775807 ELSE p_now + CAST(v_ms AS SIGNED) END) END
                WHERE wft_of = v_wf;
            END IF;
            IF LOCATE('"dw"', v_keys) > 0 THEN
                DELETE FROM messages WHERE workflow_id = v_wf;
                DELETE FROM tasks WHERE workflow_id = v_wf;
            END IF;
            IF LOCATE('"tg"', v_keys) > 0 THEN
                -- Tags set: each key's value replaced; the workflow's creation time copied, so
                -- that a listing by tag reads its index in order.
                INSERT INTO tags (workflow_id, tag_key, tag_value, tag_text, num, created_at)
                SELECT w.id, j.tkey, j.tvalue, j.ttext, j.tnum, w.created_at
                FROM workflows w, JSON_TABLE(v_s, '$.tg[*]' COLUMNS (
                    o FOR ORDINALITY,
                    tkey LONGTEXT CHARACTER SET utf8mb4 PATH '$[0]',
                    tvalue LONGTEXT CHARACTER SET utf8mb4 PATH '$[1]',
                    ttext LONGTEXT CHARACTER SET utf8mb4 PATH '$[2]',
                    tnum BIGINT PATH '$[3]')) j
                WHERE w.id = v_wf
                ORDER BY j.o
                ON DUPLICATE KEY UPDATE tag_value = VALUES(tag_value),
                    tag_text = VALUES(tag_text), num = VALUES(num);
            END IF;
            IF LOCATE('"lg"', v_keys) > 0 THEN
                INSERT INTO logs (workflow_id, seq, at, level, message)
                SELECT v_wf, j.seq, j.at, j.level, j.message
                FROM JSON_TABLE(v_s, '$.lg[*]' COLUMNS (
                    o FOR ORDINALITY,
                    seq BIGINT PATH '$[0]',
                    at BIGINT PATH '$[1]',
                    level LONGTEXT CHARACTER SET utf8mb4 PATH '$[2]',
                    message LONGTEXT CHARACTER SET utf8mb4 PATH '$[3]')) j
                ORDER BY j.o;
            END IF;
            IF LOCATE('"pa"', v_keys) > 0 THEN
                SET v_part = JSON_EXTRACT(v_s, '$.pa');
                SET v_n = JSON_LENGTH(v_part), v_i = 0;
                WHILE v_i < v_n DO
                    SET v_blob = JSON_UNQUOTE(JSON_EXTRACT(v_part, CONCAT('$[', v_i, '][1]')));
                    UPDATE workflows SET status = 'paused', pause_reason = v_blob,
                        updated_at = p_now
                    WHERE id = (SELECT tk.workflow_id FROM tasks tk
                                WHERE tk.id = CAST(JSON_VALUE(v_part, CONCAT('$[', v_i, '][0]')) AS SIGNED));
                    SET v_i = v_i + 1;
                END WHILE;
            END IF;

        WHEN 'nr' THEN
            -- Continue-as-new: the history becomes the current run's, kept; the next run
            -- starts with its first event; the ended run's activity tasks and the messages
            -- that do not carry over go (EventKind::carries_over, read off each message's
            -- kind: a signal, a cancel or terminate request, the execution's timeout).
            SELECT j.seq, j.at, j.kind, j.ver, j.input
            INTO v_f_seq, v_f_at, v_f_kind, v_f_ver, v_f_input
            FROM JSON_TABLE(v_s, '$' COLUMNS (
                seq BIGINT PATH '$.ev[0]',
                at BIGINT PATH '$.ev[1]',
                kind LONGTEXT CHARACTER SET utf8mb4 PATH '$.ev[2]',
                ver BIGINT PATH '$.ver',
                input LONGTEXT CHARACTER SET utf8mb4 PATH '$.input')) j;
            INSERT INTO past_events (workflow_id, run, seq, at, kind)
            SELECT e.workflow_id, w.run, e.seq, e.at, e.kind
            FROM events e JOIN workflows w ON w.id = e.workflow_id
            WHERE e.workflow_id = v_wf;
            DELETE FROM events WHERE workflow_id = v_wf;
            INSERT INTO events (workflow_id, seq, at, kind)
            VALUES (v_wf, v_f_seq, v_f_at, v_f_kind);
            UPDATE workflows SET run = run + 1, version = v_f_ver, input = v_f_input,
                last_seq = 1, progress = NULL, status = 'running', pause_reason = NULL,
                updated_at = p_now
            WHERE id = v_wf;
            DELETE FROM tasks WHERE workflow_id = v_wf AND kind = 1;
            DELETE FROM messages WHERE workflow_id = v_wf
              AND NOT COALESCE(
                  JSON_VALUE(CONVERT(kind USING utf8mb4), '$.type') IN ('SignalReceived', 'CancelRequested',
                                                 'TerminateRequested')
                  OR (JSON_VALUE(CONVERT(kind USING utf8mb4), '$.type') = 'TimeoutFired'
                      AND JSON_VALUE(CONVERT(kind USING utf8mb4), '$.scope') = 'execution'), FALSE);

        WHEN 'rr' THEN
            -- A reset: the history becomes the current run's, kept; the new run's history is
            -- the prefix given; the row is running again; every task goes; the messages that
            -- do not carry over go, and the signals too unless they are kept.
            SELECT j.ver, j.input, j.last, j.progress, j.keep
            INTO v_f_ver, v_f_input, v_f_last, v_f_progress, v_f_keep
            FROM JSON_TABLE(v_s, '$' COLUMNS (
                ver BIGINT PATH '$.ver',
                input LONGTEXT CHARACTER SET utf8mb4 PATH '$.input',
                last BIGINT PATH '$.last',
                progress LONGTEXT CHARACTER SET utf8mb4 PATH '$.progress',
                keep VARCHAR(8) CHARACTER SET utf8mb4 PATH '$.keep_signals')) j;
            INSERT INTO past_events (workflow_id, run, seq, at, kind)
            SELECT e.workflow_id, w.run, e.seq, e.at, e.kind
            FROM events e JOIN workflows w ON w.id = e.workflow_id
            WHERE e.workflow_id = v_wf;
            DELETE FROM events WHERE workflow_id = v_wf;
            INSERT INTO events (workflow_id, seq, at, kind)
            SELECT v_wf, j.seq, j.at, j.kind
            FROM JSON_TABLE(v_s, '$.ev[*]' COLUMNS (
                seq BIGINT PATH '$[0]',
                at BIGINT PATH '$[1]',
                kind LONGTEXT CHARACTER SET utf8mb4 PATH '$[2]')) j;
            UPDATE workflows SET run = run + 1, version = v_f_ver, input = v_f_input,
                last_seq = v_f_last, progress = v_f_progress, status = 'running',
                pause_reason = NULL, closed_at = NULL, output = NULL, failure = NULL,
                updated_at = p_now
            WHERE id = v_wf;
            DELETE FROM tasks WHERE workflow_id = v_wf;
            DELETE FROM messages WHERE workflow_id = v_wf
              AND NOT COALESCE(
                  (JSON_VALUE(CONVERT(kind USING utf8mb4), '$.type') IN ('SignalReceived', 'CancelRequested',
                                                  'TerminateRequested')
                   OR (JSON_VALUE(CONVERT(kind USING utf8mb4), '$.type') = 'TimeoutFired'
                       AND JSON_VALUE(CONVERT(kind USING utf8mb4), '$.scope') = 'execution'))
                  AND (v_f_keep IN ('true', '1')
                       OR JSON_VALUE(CONVERT(kind USING utf8mb4), '$.type') <> 'SignalReceived'), FALSE);

        WHEN 'forget' THEN
            SET v_owner = JSON_VALUE(v_s, '$.owner');
            UPDATE tasks SET affinity_owner = NULL, affinity_until = NULL
            WHERE affinity_owner = v_owner;

        WHEN 'hold' THEN
            SET v_blob = JSON_UNQUOTE(JSON_EXTRACT(v_s, '$.reason'));
            UPDATE workflows SET status = 'paused', pause_reason = v_blob, updated_at = p_now
            WHERE id = v_wf;
            DELETE FROM tasks WHERE wft_of = v_wf;

        WHEN 'purge' THEN
            -- Terminal statuses only, whatever the filter: an open workflow is never purged,
            -- nor one with an open child (its id must not be taken again while the child may
            -- report to it). Rows another transaction holds are skipped, not waited for. The
            -- ids are read (and locked) first, then each workflow's rows are deleted, table
            -- by table, as apply.rs does.
            SET v_ms = JSON_VALUE(v_s, '$.older_ms');
            SET v_f_status_filter = JSON_VALUE(v_s, '$.status');
            SET v_f_name = JSON_VALUE(v_s, '$.name');
            SET v_f_except = JSON_EXTRACT(v_s, '$.except');
            SET v_max = JSON_VALUE(v_s, '$.max');
            -- now - older_ms, saturating.
            SET v_at = CASE WHEN p_now < 0 AND v_ms > p_now + 9223372036854775807
                            THEN -9223372036854775807 - 1 ELSE p_now - v_ms END;
            SET v_c_ids = '';
            BEGIN
                DECLARE v_cur CURSOR FOR
                    SELECT id FROM workflows
                    WHERE closed_at < v_at
                      AND status IN ('completed', 'failed', 'cancelled', 'terminated', 'timed_out')
                      AND (v_f_status_filter IS NULL OR status = v_f_status_filter)
                      AND (v_f_name IS NULL OR name = v_f_name)
                      AND name NOT IN (
                          SELECT CAST(x.n AS BINARY)
                          FROM JSON_TABLE(COALESCE(v_f_except, '[]'), '$[*]' COLUMNS (
                              n LONGTEXT CHARACTER SET utf8mb4 PATH '$')) x)
                      AND NOT EXISTS (
                          SELECT 1 FROM workflows c WHERE c.parent_id = workflows.id
                            AND c.status NOT IN ('completed', 'failed', 'cancelled', 'terminated', 'timed_out'))
                    ORDER BY closed_at, id LIMIT v_max
                    FOR UPDATE SKIP LOCKED;
                OPEN v_cur;
                ids: LOOP
                    SET v_nf = FALSE;
                    FETCH v_cur INTO v_key;
                    IF v_nf THEN
                        LEAVE ids;
                    END IF;
                    SET v_c_ids = CONCAT(v_c_ids, IF(v_c_ids = '', '', ', '),
                                         JSON_QUOTE(CONVERT(v_key USING utf8mb4)));
                END LOOP;
                CLOSE v_cur;
            END;
            SET v_part = CONCAT('[', v_c_ids, ']');
            SET v_n = JSON_LENGTH(v_part), v_i = 0;
            WHILE v_i < v_n DO
                SET v_key = JSON_VALUE(v_part, CONCAT('$[', v_i, ']'));
                DELETE FROM events WHERE workflow_id = v_key;
                DELETE FROM past_events WHERE workflow_id = v_key;
                DELETE FROM messages WHERE workflow_id = v_key;
                DELETE FROM tasks WHERE workflow_id = v_key;
                DELETE FROM logs WHERE workflow_id = v_key;
                DELETE FROM tags WHERE workflow_id = v_key;
                DELETE FROM workflows WHERE id = v_key;
                SET v_i = v_i + 1;
            END WHILE;
            SET v_purged = CONCAT_WS(', ', NULLIF(v_purged, ''), NULLIF(v_c_ids, ''));

        WHEN 'claim_a' THEN
            -- The workflow's claimable activity tasks, earliest first, up to max (rows another
            -- transaction holds skipped): a new token, the lease's expiry (also the time the
            -- task is claimable again), the owner, one more delivery.
            SET v_owner = JSON_VALUE(v_s, '$.owner');
            SET v_exp = (CASE WHEN CAST(JSON_VALUE(v_s, '$.lease_ms') AS SIGNED) > 0 AND p_now > 0 AND CAST(JSON_VALUE(v_s, '$.lease_ms') AS SIGNED) > 9223372036854775807 - p_now THEN 9223372036854775807 ELSE p_now + CAST(JSON_VALUE(v_s, '$.lease_ms') AS SIGNED) END);
            SET v_max = JSON_VALUE(v_s, '$.max');
            SET v_acts = COALESCE(v_acts, ''), v_acts_ready = COALESCE(v_acts_ready, '');
            -- One row at a time, each the first not yet claimed here, rather than a cursor:
            -- MariaDB copies a cursor's rows into a temporary table, which costs more than the
            -- few rows an eager claim takes.
            SET v_i = 0, v_c_ids = '';
            picked: WHILE v_i < v_max DO
                SET v_nf = FALSE, v_id = NULL;
                SELECT id, visible_at, lease_token, deliveries, activity_id, name, input, options,
                       attempt
                INTO v_id, v_c_vis, v_c_token, v_c_del, v_c_act, v_c_name, v_c_input,
                     v_c_options, v_c_attempt
                FROM tasks
                WHERE workflow_id = v_wf AND kind = 1 AND visible_at <= p_now
                  AND FIND_IN_SET(id, v_c_ids) = 0
                ORDER BY visible_at, id LIMIT 1
                FOR UPDATE SKIP LOCKED;
                IF v_id IS NULL THEN
                    LEAVE picked;
                END IF;
                SET v_c_id = v_id, v_i = v_i + 1;
                SET v_c_ids = CONCAT(v_c_ids, IF(v_c_ids = '', '', ','), v_c_id);
                UPDATE tasks SET lease_token = lease_token + 1, lease_expires_at = v_exp,
                    visible_at = v_exp, lease_owner = v_owner, deliveries = deliveries + 1
                WHERE id = v_c_id;
                SET v_acts = CONCAT(v_acts, IF(v_acts = '', '', ', '),
                    JSON_ARRAY(v_c_id + 0, v_c_token + 1, v_exp + 0, v_c_del + 1, v_c_act + 0,
                               CONVERT(v_c_name USING utf8mb4),
                               CONVERT(v_c_input USING utf8mb4),
                               CONVERT(v_c_options USING utf8mb4), v_c_attempt + 0));
                SET v_acts_ready = CONCAT(v_acts_ready, IF(v_acts_ready = '', '', ', '),
                                          v_c_vis);
            END WHILE;

        WHEN 'claim_w' THEN
            -- The workflow's task if claimable and no other owner's affinity keeps it (a row
            -- another transaction holds is skipped), with the workflow and its due messages.
            SET v_owner = JSON_VALUE(v_s, '$.owner');
            SET v_exp = (CASE WHEN CAST(JSON_VALUE(v_s, '$.lease_ms') AS SIGNED) > 0 AND p_now > 0 AND CAST(JSON_VALUE(v_s, '$.lease_ms') AS SIGNED) > 9223372036854775807 - p_now THEN 9223372036854775807 ELSE p_now + CAST(JSON_VALUE(v_s, '$.lease_ms') AS SIGNED) END);
            SET v_max = JSON_VALUE(v_s, '$.max');
            SET v_nf = FALSE, v_c_id = NULL;
            SELECT id, visible_at, lease_token, deliveries
            INTO v_c_id, v_c_vis, v_c_token, v_c_del
            FROM tasks
            WHERE wft_of = v_wf AND visible_at <= p_now
              AND (affinity_owner IS NULL OR affinity_owner = v_owner OR affinity_until <= p_now)
            LIMIT v_max FOR UPDATE SKIP LOCKED;
            IF v_c_id IS NOT NULL THEN
                UPDATE tasks SET lease_token = lease_token + 1, lease_expires_at = v_exp,
                    visible_at = v_exp, lease_owner = v_owner, deliveries = deliveries + 1
                WHERE id = v_c_id;
                SET v_nf = FALSE, v_w_name = NULL;
                SELECT name, last_seq, run INTO v_w_name, v_w_last, v_w_run
                FROM workflows WHERE id = v_wf;
                IF NOT v_nf THEN
                    -- The due messages in one statement (each row read once; the writer's
                    -- session lets GROUP_CONCAT hold 16 MiB, and an answer cut short there is
                    -- no JSON, so the batch is applied again from the client's side).
                    SET v_msgs = NULL;
                    SELECT GROUP_CONCAT(JSON_ARRAY(id + 0, visible_at + 0,
                                                   CONVERT(kind USING utf8mb4))
                                        ORDER BY visible_at, id SEPARATOR ', ')
                    INTO v_msgs FROM messages
                    WHERE workflow_id = v_wf AND visible_at <= p_now;
                    SET v_msgs = COALESCE(v_msgs, '');
                    SET v_wfts = CONCAT_WS(', ', NULLIF(v_wfts, ''),
                        CONCAT('[', v_c_id, ', ', v_c_token + 1, ', ', v_exp, ', ', v_c_del + 1,
                               ', ', JSON_QUOTE(CONVERT(v_wf USING utf8mb4)),
                               ', ', JSON_QUOTE(CONVERT(v_w_name USING utf8mb4)),
                               ', ', v_w_last, ', [', v_msgs, '], ', v_w_run, ']'));
                    SET v_wfts_ready = CONCAT_WS(', ', NULLIF(v_wfts_ready, ''), v_c_vis);
                END IF;
            END IF;

        WHEN 'if' THEN
            CALL loom_checks(JSON_EXTRACT(v_s, '$.all'), p_now, v_failed, v_found);
            IF v_decided IS NULL THEN
                SET v_decided = IF(v_failed IS NULL, 'true', 'false');
            END IF;
            SET v_part = JSON_EXTRACT(v_s, IF(v_failed IS NULL, '$.then', '$.else'));
            IF JSON_LENGTH(v_part) > 0 THEN
                SET v_queue = JSON_MERGE_PRESERVE(v_part, v_queue);
            END IF;

        WHEN 'sput' THEN
            -- A create inserts: as the item's first write, its insert is the check that no
            -- schedule has the id (see the header). A change updates the row its check locked.
            SELECT j.id, j.new, j.version, j.wake, j.body
            INTO v_key, v_f_new, v_f_ver, v_f_wake, v_f_body
            FROM JSON_TABLE(v_s, '$' COLUMNS (
                id LONGTEXT CHARACTER SET utf8mb4 PATH '$.id',
                new VARCHAR(8) CHARACTER SET utf8mb4 PATH '$.new',
                version BIGINT PATH '$.version',
                wake BIGINT PATH '$.wake',
                body LONGTEXT CHARACTER SET utf8mb4 PATH '$.body')) j;
            IF v_f_new IN ('true', '1') THEN
                SET v_guard = NULL;
                IF NOT v_wrote THEN
                    SET v_n = COALESCE(JSON_LENGTH(p_checks), 0), v_i = 0;
                    WHILE v_i < v_n AND v_guard IS NULL DO
                        IF JSON_VALUE(p_checks, CONCAT('$[', v_i, '][0]')) = 'sched'
                           AND CAST(JSON_VALUE(p_checks, CONCAT('$[', v_i, '][1]')) AS BINARY) = v_key
                           AND JSON_VALUE(p_checks, CONCAT('$[', v_i, '][2]')) IS NULL THEN
                            SET v_guard = v_i + 1;
                        END IF;
                        SET v_i = v_i + 1;
                    END WHILE;
                END IF;
                BEGIN
                    DECLARE EXIT HANDLER FOR 1062
                    BEGIN
                        IF v_guard IS NULL THEN
                            RESIGNAL;
                        END IF;
                        SET v_dup = TRUE;
                    END;
                    INSERT INTO schedules (id, version, wake_at, body)
                    VALUES (v_key, v_f_ver, v_f_wake, v_f_body);
                END;
                IF v_dup THEN
                    SET v_nf = FALSE, v_id = NULL;
                    SELECT version INTO v_id FROM schedules WHERE id = v_key;
                    SET o_failed = v_guard, o_found = COALESCE(CAST(v_id AS CHAR), 'null');
                    LEAVE steps;
                END IF;
            ELSE
                UPDATE schedules SET version = v_f_ver, wake_at = v_f_wake, body = v_f_body
                WHERE id = v_key;
            END IF;

        WHEN 'sdel' THEN
            SET v_key = JSON_VALUE(v_s, '$.id');
            DELETE FROM schedules WHERE id = v_key;

        ELSE
            SET v_found = CONCAT('loom_apply: unknown step ', COALESCE(v_sk, 'null'));
            SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = v_found;
        END CASE;
        IF v_sk <> 'if' THEN
            SET v_wrote = TRUE;
        END IF;
    END WHILE;
    IF o_failed IS NULL THEN
        SET o_out = CONCAT('{', CONCAT_WS(', ',
            CONCAT('"acts": [', v_acts, ']'),
            CONCAT('"acts_ready": [', v_acts_ready, ']'),
            CONCAT('"wfts": [', v_wfts, ']'),
            CONCAT('"wfts_ready": [', v_wfts_ready, ']'),
            CONCAT('"decided": ', v_decided),
            CONCAT('"purged": [', v_purged, ']')), '}');
    END IF;
END
$$
-- Applies the batch; see the header.
CREATE PROCEDURE loom_apply(IN now_ms BIGINT, IN batch LONGBLOB)
MODIFIES SQL DATA
BEGIN
    DECLARE v_now BIGINT;
    DECLARE v_pos INT;
    DECLARE v_checks LONGTEXT CHARACTER SET utf8mb4;
    DECLARE v_steps LONGTEXT CHARACTER SET utf8mb4;
    DECLARE v_nchecks INT;
    DECLARE v_c0 VARCHAR(16) CHARACTER SET utf8mb4;
    DECLARE v_c1 VARCHAR(16) CHARACTER SET utf8mb4;
    DECLARE v_failed INT;
    DECLARE v_found LONGTEXT CHARACTER SET utf8mb4;
    DECLARE v_out LONGTEXT CHARACTER SET utf8mb4;
    -- The answer's elements so far: the recent ones in v_chunk, moved to v_answer in pieces
    -- of 64 KiB or more, so that a long answer is not copied once per item.
    DECLARE v_answer LONGTEXT CHARACTER SET utf8mb4 DEFAULT '';
    DECLARE v_chunk LONGTEXT CHARACTER SET utf8mb4 DEFAULT '';
    DECLARE v_wrote BOOLEAN;
    DECLARE v_check BOOLEAN;
    DECLARE v_first VARCHAR(2) CHARACTER SET utf8mb4;
    DECLARE v_task BIGINT;
    DECLARE v_token BIGINT;
    DECLARE v_wf VARBINARY(1024);
    DECLARE v_act BIGINT;
    DECLARE v_attempt BIGINT;
    DECLARE v_last BIGINT;
    DECLARE v_hit INT;
    DECLARE v_nf BOOLEAN DEFAULT FALSE;
    -- Where the next item begins and ends in the batch, in bytes, and the item.
    DECLARE v_from BIGINT DEFAULT 1;
    DECLARE v_to BIGINT;
    DECLARE v_item LONGTEXT CHARACTER SET utf8mb4;
    DECLARE CONTINUE HANDLER FOR NOT FOUND SET v_nf = TRUE;

    -- The store's clock for the whole call.
    SET v_now = COALESCE(now_ms, CAST(FLOOR(UNIX_TIMESTAMP(NOW(3)) * 1000) AS SIGNED));
    SET v_pos = 0;
    -- The items, one per line: compact JSON holds no raw line break. The batch is bytes, so
    -- finding the next line is a scan from where the last one ended, never from the start
    -- (a cursor over JSON_TABLE would keep every item in a temporary table on disk).
    items: WHILE v_from <= LENGTH(batch) DO
        SET v_to = LOCATE(x'0A', batch, v_from);
        IF v_to = 0 THEN
            SET v_to = LENGTH(batch) + 1;
        END IF;
        SET v_item = CONVERT(SUBSTRING(batch, v_from, v_to - v_from) USING utf8mb4);
        SET v_from = v_to + 1, v_pos = v_pos + 1;
        SET v_checks = JSON_EXTRACT(v_item, '$.checks'), v_steps = JSON_EXTRACT(v_item, '$.steps');
        SET v_failed = NULL, v_found = NULL, v_out = NULL, v_wrote = FALSE, v_check = TRUE;
        SET v_nchecks = COALESCE(JSON_LENGTH(v_checks), 0);
        SET v_c0 = JSON_VALUE(v_checks, '$[0][0]'), v_c1 = JSON_VALUE(v_checks, '$[1][0]');
        IF v_nchecks = 2 AND v_c0 = 'leased' AND v_c1 = 'attempt' THEN
            -- An activity's commit: its checks are evaluated by the statement that ends or
            -- requeues the attempt; only if it matches no row are they read (for the answer).
            SET v_task = CAST(JSON_VALUE(v_checks, '$[1][1]') AS SIGNED);
            SET v_token = CAST(JSON_VALUE(v_checks, '$[0][2]') AS SIGNED);
            SET v_wf = JSON_VALUE(v_checks, '$[1][2]');
            SET v_act = CAST(JSON_VALUE(v_checks, '$[1][3]') AS SIGNED);
            SET v_attempt = CAST(JSON_VALUE(v_checks, '$[1][4]') AS SIGNED);
            SET v_first = NULL;
            IF JSON_LENGTH(v_steps, '$[0].dt') = 1
               AND CAST(JSON_VALUE(v_steps, '$[0].dt[0]') AS SIGNED) = v_task THEN
                DELETE FROM tasks
                WHERE id = v_task AND lease_token = v_token AND lease_expires_at > v_now
                  AND kind = 1 AND workflow_id = v_wf AND activity_id = v_act
                  AND attempt = v_attempt;
                IF ROW_COUNT() > 0 THEN
                    SET v_first = 'dt';
                END IF;
            ELSEIF JSON_LENGTH(v_steps, '$[0].rq') = 1
                   AND CAST(JSON_VALUE(v_steps, '$[0].rq[0][0]') AS SIGNED) = v_task THEN
                UPDATE tasks SET attempt = attempt + 1, lease_expires_at = NULL,
                    lease_owner = NULL, deliveries = 0,
                    visible_at = (CASE WHEN CAST(JSON_VALUE(v_steps, '$[0].rq[0][1]') AS SIGNED) = 1 THEN CASE WHEN CAST(JSON_VALUE(v_steps, '$[0].rq[0][2]') AS SIGNED) > 0 AND v_now > 0 AND CAST(JSON_VALUE(v_steps, '$[0].rq[0][2]') AS SIGNED) > 9223372036854775807 - v_now THEN 9223372036854775807 ELSE v_now + CAST(JSON_VALUE(v_steps, '$[0].rq[0][2]') AS SIGNED) END ELSE CAST(JSON_VALUE(v_steps, '$[0].rq[0][2]') AS SIGNED) END)
                WHERE id = v_task AND lease_token = v_token AND lease_expires_at > v_now
                  AND kind = 1 AND workflow_id = v_wf AND activity_id = v_act
                  AND attempt = v_attempt;
                IF ROW_COUNT() > 0 THEN
                    SET v_first = 'rq';
                END IF;
            END IF;
            IF v_first IS NOT NULL THEN
                SET v_steps = JSON_REMOVE(v_steps, CONCAT('$[0].', v_first));
                SET v_wrote = TRUE, v_check = FALSE;
            END IF;
        ELSEIF v_nchecks = 1 AND v_c0 = 'absent'
               AND JSON_VALUE(v_steps, '$[0].s') = 'w'
               AND CAST(JSON_VALUE(v_steps, '$[0].cw[0]') AS BINARY)
                   = CAST(JSON_VALUE(v_checks, '$[0][1]') AS BINARY) THEN
            -- A start: its check is its own insert, the item's first write, which meets an
            -- existing row on the key (and then fails the check, see loom_steps).
            SET v_check = FALSE;
        ELSEIF v_nchecks = 4 AND v_c0 = 'leased' AND v_c1 = 'wft_of'
               AND JSON_VALUE(v_checks, '$[2][0]') = 'open'
               AND JSON_VALUE(v_checks, '$[3][0]') = 'last' THEN
            -- A workflow task's commit: its four checks in one statement that locks the task
            -- and then the workflow; only if it matches no row are they read one by one.
            SET v_task = CAST(JSON_VALUE(v_checks, '$[0][1]') AS SIGNED);
            SET v_token = CAST(JSON_VALUE(v_checks, '$[0][2]') AS SIGNED);
            SET v_wf = JSON_VALUE(v_checks, '$[1][2]');
            SET v_last = CAST(JSON_VALUE(v_checks, '$[3][2]') AS SIGNED);
            SET v_nf = FALSE, v_hit = NULL;
            SELECT 1 INTO v_hit
            FROM tasks tk STRAIGHT_JOIN workflows wr ON wr.id = tk.workflow_id
            WHERE tk.id = v_task AND tk.lease_token = v_token AND tk.lease_expires_at > v_now
              AND tk.kind = 0 AND tk.workflow_id = v_wf
              AND wr.status NOT IN ('completed', 'failed', 'cancelled', 'terminated', 'timed_out')
              AND wr.last_seq = v_last
            FOR UPDATE;
            IF v_hit IS NOT NULL THEN
                SET v_check = FALSE;
            END IF;
        END IF;
        IF v_check THEN
            CALL loom_checks(v_checks, v_now, v_failed, v_found);
        END IF;
        IF v_failed IS NULL THEN
            CALL loom_steps(v_steps, v_now, v_checks, v_wrote, v_out, v_failed, v_found);
        END IF;
        SET v_chunk = CONCAT(v_chunk, ', [', v_pos, ', ', COALESCE(v_failed, 'null'), ', ',
            IF(v_failed IS NULL, 'null', COALESCE(v_found, 'null')), ', ', v_now, ', ',
            COALESCE(v_out, 'null'), ']');
        IF LENGTH(v_chunk) >= 65536 THEN
            SET v_answer = CONCAT(v_answer, v_chunk), v_chunk = '';
        END IF;
    END WHILE;
    -- Each element was written with a leading ', ': the first one's is dropped.
    SELECT CONCAT('[', SUBSTRING(CONCAT(v_answer, v_chunk), 3), ']') AS answer;
END
$$
