-- billing 0009: billing's own SQL for the gateway's hot path, which composes it (pool/sql/). Billing owns
-- every write to ledger transactions, entries and account balances, the BYOK month's counter and free
-- tier's rule, and the API keys' monthly spend counters; these are the forms of them that run a batch at
-- a time inside the gateway's statements (the ORM form, for everything else, is billing.services.ledger).
-- Frozen: a change to the functions ships as a new file with a new migration. (The ledger's trigger
-- functions are billing/0002's.)
--
-- What changed since 0008: the monthly spend limit reads the key's month from its counter
-- (billing_apikeymonthlyspend, one row) rather than summing the month's request records, which grew
-- with every request of the month; billing_api_key_spend_add keeps the counter, in the settlement's
-- transaction.
--
-- - billing_hold_take: reserve an amount of the payer's spendable balance (balance − held) with the
--   hold row; false when it cannot cover it. One conditional UPDATE checks and reserves, so requests
--   can never together reserve more than the balance. With an API key's monthly spend limit
--   (p_limit; NULL: none) it first takes the payer's account row (every hold of the payer waits its
--   turn there, and each statement below reads what the holds before it committed), then refuses when
--   the key's settled charges of the month (its counter for the month p_month_from starts) plus its
--   open holds plus this one would cross the limit: requests in flight count against the limit, so
--   concurrency cannot overspend it. (A settlement adds to the counter and releases its hold in one
--   transaction, which also moves the payer's account row: read after taking that row, the two agree.)
--   The hold row names the API key only when it has a limit (the partial index reads only those).
-- - billing_ledger_post_batch: ledger transactions of two entries each (from, to), in one statement.
--   Entries are signed and sum to zero per transaction (the deferred trigger checks it at COMMIT);
--   an entry to a NULL account (a platform account not made yet) is refused by its NOT NULL. The
--   cached balances are the caller's to move, with billing_balances_move, in the same transaction.
-- - billing_balances_move: release the holds named (deleted, as billing.services.usage releases one)
--   and move cached balances and holds, once per account, in id order. Every writer of accounts locks
--   them in id order, so two writers never wait on each other in a cycle; the not-below-zero CHECK
--   refuses a move that would take an account below zero. (Since 0008 the holds' release is billing's
--   too, one statement for a whole settled batch, rather than a DELETE per request in pool_settle.)
-- - billing_api_key_spend_add: add what a settled batch charged to its API keys' month counters, one
--   upsert per key and month, in key order (a counter that other settlements move too: the caller
--   takes it before any account).
-- - billing_byok_count: count one more BYOK request of a billing owner's month (an organization's
--   members count on the organization's counter, others on their own) and return the month's count.
-- - billing_byok_fee_due: the BYOK free tier. The n-th BYOK request of a billing owner's calendar
--   month (UTC) is free while n ≤ p_free (HEADROOM_BYOK_FREE_REQUESTS, 1,000,000: SPEC.md "platform
--   fee 0 while the owner's month count ≤ 1,000,000, else 5%"); past it, it owes the fee.

CREATE OR REPLACE FUNCTION billing_hold_take(
    p_account bigint, p_amount bigint, p_hold_id text, p_api_key bigint, p_limit bigint, p_month_from timestamptz
)
RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF p_limit IS NOT NULL THEN
        PERFORM 1 FROM billing_account WHERE id = p_account FOR UPDATE;
        IF COALESCE((SELECT SUM(h.amount) FROM billing_balancehold h WHERE h.api_key_id = p_api_key), 0)
           + COALESCE((SELECT s.charged FROM billing_apikeymonthlyspend s
                       WHERE s.api_key_id = p_api_key AND s.month = (p_month_from AT TIME ZONE 'UTC')::date), 0)
           + p_amount > p_limit THEN
            RETURN FALSE;
        END IF;
    END IF;
    -- One statement: the reservation and its row, or neither.
    WITH reserved AS (
        UPDATE billing_account SET held = held + p_amount WHERE id = p_account AND balance - held >= p_amount
        RETURNING id
    )
    INSERT INTO billing_balancehold (account_id, request_id, api_key_id, amount, created_at)
    SELECT reserved.id, p_hold_id, CASE WHEN p_limit IS NULL THEN NULL ELSE p_api_key END, p_amount, now()
    FROM reserved;
    RETURN FOUND;
END;
$$;

CREATE OR REPLACE FUNCTION billing_ledger_post_batch(
    p_keys text[], p_kinds text[], p_memos text[], p_from bigint[], p_to bigint[], p_amounts bigint[]
)
RETURNS void LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    WITH txn AS (
        INSERT INTO billing_ledgertransaction (idempotency_key, kind, memo, created_at)
        SELECT t.key, t.kind, t.memo, now() FROM unnest(p_keys, p_kinds, p_memos) AS t(key, kind, memo)
        RETURNING id, idempotency_key
    )
    INSERT INTO billing_ledgerentry (transaction_id, account_id, amount, created_at)
    SELECT txn.id, leg.account, leg.amount, now()
    FROM unnest(p_keys, p_from, p_to, p_amounts) AS p(key, src, dst, amount)
    JOIN txn ON txn.idempotency_key = p.key,
    LATERAL (VALUES (p.src, -p.amount), (p.dst, p.amount)) AS leg(account, amount);
END;
$$;

CREATE OR REPLACE FUNCTION billing_balances_move(p_ids bigint[], p_balance bigint[], p_release text[])
RETURNS void LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    r record;
    v_accounts bigint[];
    v_released bigint[];
BEGIN
    WITH released AS (
        DELETE FROM billing_balancehold h WHERE h.request_id = ANY (p_release) RETURNING h.account_id, h.amount
    )
    SELECT array_agg(account_id), array_agg(amount) INTO v_accounts, v_released FROM released;
    FOR r IN SELECT u.id, SUM(u.balance)::bigint AS balance, SUM(u.held)::bigint AS held FROM (
                 SELECT m.id, m.balance, 0 AS held FROM unnest(p_ids, p_balance) AS m(id, balance)
                 UNION ALL
                 SELECT h.id, 0, -h.amount FROM unnest(v_accounts, v_released) AS h(id, amount)
             ) u GROUP BY u.id ORDER BY u.id
    LOOP
        IF r.balance <> 0 OR r.held <> 0 THEN
            UPDATE billing_account SET balance = balance + r.balance, held = held + r.held WHERE id = r.id;
        END IF;
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION billing_byok_count(p_user bigint, p_org bigint, p_month date)
RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_count bigint;
BEGIN
    IF p_org IS NOT NULL THEN
        INSERT INTO billing_byokmonthlyusage AS u (user_id, organization_id, month, requests)
        VALUES (NULL, p_org, p_month, 1)
        ON CONFLICT (organization_id, month) WHERE organization_id IS NOT NULL
        DO UPDATE SET requests = u.requests + 1 RETURNING u.requests INTO v_count;
    ELSE
        INSERT INTO billing_byokmonthlyusage AS u (user_id, organization_id, month, requests)
        VALUES (p_user, NULL, p_month, 1)
        ON CONFLICT (user_id, month) WHERE user_id IS NOT NULL
        DO UPDATE SET requests = u.requests + 1 RETURNING u.requests INTO v_count;
    END IF;
    RETURN v_count;
END;
$$;

CREATE OR REPLACE FUNCTION billing_byok_fee_due(p_nth bigint, p_free bigint)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_nth > p_free
$$;

CREATE OR REPLACE FUNCTION billing_api_key_spend_add(p_keys bigint[], p_months date[], p_amounts bigint[])
RETURNS void LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    INSERT INTO billing_apikeymonthlyspend AS s (api_key_id, month, charged)
    SELECT t.key, t.month, SUM(t.amount) FROM unnest(p_keys, p_months, p_amounts) AS t(key, month, amount)
    GROUP BY t.key, t.month ORDER BY t.key, t.month
    ON CONFLICT (api_key_id, month) DO UPDATE SET charged = s.charged + EXCLUDED.charged;
END;
$$;
