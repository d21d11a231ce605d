"""The gateway's hot path: a request's database work in two statements, shared by batches.

Why raw SQL: built with the ORM, one request took ~30 statements and ~13 ms of Python;
PERFORMANCE.md measured the way to several hundred requests a second per core as one statement per
phase on psycopg's async connections. A later census found most of what remained to be fixed cost
per statement and per transaction, on both sides of the connection, so a request makes two
statements, and the requests that wait on the same statement share it (batch):

1. `begin` (begin.py) — everything before the upstream call: the *plan* (plan.py: who asks, for
   what, and what the routing rules decide up front), the *hold* (hold.py: the money the first
   route reserves) and the *pick* (pick.py: the least recently used candidate key, leased to the
   request). It commits without waiting for the disk (db.py, `durable=False`).
2. `settle` (settle.py) — everything after the answer, exactly once per request.

Rules stay in one place each: which rows qualify are ORM Q objects in keys.selectors and
exchange.selectors, compiled once per process (fragments.py); the rounding of money and the BYOK
free tier are billing's; the plan's decisions are its SELECT's, read by pool.services rather than
decided again; amounts after the answer are pool.services'. The per-request steps inside a batch
are PL/pgSQL functions, shipped as frozen files in pool/sql/ and billing/sql/ and installed by
migrations. Statements are built with sqltext.Sql; what they take and return is in dtos.py.
"""
