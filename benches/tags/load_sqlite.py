# Fills a Loom SQLite database (created by `loom init`) with N completed workflows, each tagged
# customer=c{i % (N/10)} (ten workflows per customer), amount={i} and stage=paid, with the rows
# the engine writes, to measure listings by tag:
#   loom --db sqlite:///tmp/t.db init && python3 benches/tags/load_sqlite.py /tmp/t.db 1000000
#   loom --db sqlite:///tmp/t.db list --tag customer=c4242
import json, sqlite3, sys, time
path, n = sys.argv[1], int(sys.argv[2])
db = sqlite3.connect(path)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=OFF")
t0 = time.time()
base = 1_796_000_000_000
customers = max(1, n // 10)
def rows():
    for i in range(n):
        yield (f"wf-{i:07}", "OrderProcessing", 1, "completed", '{"order_id":"%d"}' % i,
               base + i, base + i, base + i, 14, '"done"', 1)
def tags():
    for i in range(n):
        c = f"c{i % customers}"
        yield (f"wf-{i:07}", "customer", json.dumps({"text": c}), c, None, base + i)
        yield (f"wf-{i:07}", "amount", json.dumps({"int": i}), str(i), i, base + i)
        yield (f"wf-{i:07}", "stage", json.dumps({"text": "paid"}), "paid", None, base + i)
db.executemany("INSERT INTO workflows (id, name, version, status, input, created_at, updated_at, closed_at, last_seq, output, run) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows())
db.executemany("INSERT INTO tags (workflow_id, key, value, text, num, created_at) VALUES (?,?,?,?,?,?)", tags())
db.commit()
db.execute("ANALYZE")
db.commit()
print(f"loaded {n} workflows in {time.time()-t0:.1f}s")
