-- Fills schema tags1m (created by `LOOM_PG_SCHEMA=tags1m loom --db postgres://... init`) with
-- 1,000,000 completed workflows tagged customer=c{i % 100000}, amount={i} and stage=paid, with
-- the rows the engine writes, to measure listings by tag:
--   psql -h 127.0.0.1 -U postgres -d test -f benches/tags/load_pg.sql
SET search_path TO tags1m;
INSERT INTO workflows (id, name, version, status, input, created_at, updated_at, closed_at, last_seq, output, run)
SELECT 'wf-' || lpad(i::text, 7, '0'), 'OrderProcessing', 1, 'completed', '{"order_id":"' || i || '"}',
       1796000000000 + i, 1796000000000 + i, 1796000000000 + i, 14, '"done"', 1
FROM generate_series(0, 999999) AS i;
INSERT INTO tags (workflow_id, key, value, text, num, created_at)
SELECT 'wf-' || lpad(i::text, 7, '0'), 'customer', '{"text":"c' || (i % 100000) || '"}', 'c' || (i % 100000), NULL, 1796000000000 + i
FROM generate_series(0, 999999) AS i;
INSERT INTO tags (workflow_id, key, value, text, num, created_at)
SELECT 'wf-' || lpad(i::text, 7, '0'), 'amount', '{"int":' || i || '}', i::text, i, 1796000000000 + i
FROM generate_series(0, 999999) AS i;
INSERT INTO tags (workflow_id, key, value, text, num, created_at)
SELECT 'wf-' || lpad(i::text, 7, '0'), 'stage', '{"text":"paid"}', 'paid', NULL, 1796000000000 + i
FROM generate_series(0, 999999) AS i;
VACUUM ANALYZE workflows;
VACUUM ANALYZE tags;
