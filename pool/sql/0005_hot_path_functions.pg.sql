-- pool 0005: the gateway's hot-path functions, as migration pool/0005_hot_path_functions installed them
-- (reconstructed exactly from pool/sql.py at commit 074e1f0, the last before pool/0006). Frozen: a
-- change to the functions ships as a new file with a new migration.

CREATE OR REPLACE FUNCTION pool_hold_take(p_account bigint, p_amount bigint, p_hold_id text)
RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    UPDATE billing_account SET held = held + p_amount WHERE id = p_account AND balance - held >= p_amount;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO billing_balancehold (account_id, request_id, amount, created_at)
    VALUES (p_account, p_hold_id, p_amount, now());
    RETURN true;
END;
$$;

CREATE OR REPLACE FUNCTION pool_key_take(p_provider bigint, p_candidates bigint[], p_request text)
RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    taken bigint;
BEGIN
    IF p_candidates IS NULL OR cardinality(p_candidates) = 0 THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock(7201701, mod(p_provider, 2147483647)::integer);
    UPDATE keys_providerkey SET lru_seq = nextval('pool_key_lru_seq'), last_used_at = now()
    WHERE id = (
        SELECT k.id FROM keys_providerkey k WHERE k.id = ANY (p_candidates)
        ORDER BY k.lru_seq, k.id LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED
    )
    RETURNING id INTO taken;
    IF taken IS NOT NULL THEN
        INSERT INTO keys_providerkeylease (key_id, request_id, created_at) VALUES (taken, p_request, now());
    END IF;
    RETURN taken;
END;
$$;

CREATE OR REPLACE FUNCTION pool_ledger_post(
    p_key text, p_kind text, p_memo text, p_from bigint, p_to bigint, p_amount bigint
) RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_txn bigint;
BEGIN
    -- One ledger transaction moving p_amount from one account to another (two entries summing to zero);
    -- the cached balances are the caller's to move.
    WITH txn AS (
        INSERT INTO billing_ledgertransaction (idempotency_key, kind, memo, created_at)
        VALUES (p_key, p_kind, p_memo, now()) RETURNING id
    ), legs AS (
        INSERT INTO billing_ledgerentry (transaction_id, account_id, amount, created_at)
        SELECT txn.id, leg.account, leg.amount, now() FROM txn,
            (VALUES (p_from, -p_amount), (p_to, p_amount)) AS leg(account, amount)
    )
    SELECT txn.id INTO v_txn FROM txn;
    RETURN v_txn;
END;
$$;

CREATE OR REPLACE FUNCTION pool_settle(
    p_batch json, p_accounts bigint[], p_platform text[], p_keys bigint[], p_byok_users bigint[],
    p_byok_orgs bigint[], p_months date[], p_lock_first boolean
)
RETURNS TABLE(out_request_id text, out_inserted boolean, out_charged bigint, out_fee bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    s record;
    r record;
    v_kinds text[] := ARRAY['revenue', 'pool_rewards', 'exchange_payouts'];
    v_platform bigint[];  -- those accounts' ids, in that order
    -- Every account the batch moves, with what it moves; the payers' balances as the batch leaves them.
    v_ids bigint[] := ARRAY[]::bigint[];
    v_delta bigint[] := ARRAY[]::bigint[];
    v_held bigint[] := ARRAY[]::bigint[];
    v_left bigint[] := ARRAY[]::bigint[];  -- NULL until the account is read (it is read as a payer)
    v_i integer;
    v_j integer;
    v_balance bigint;
    v_count bigint;
    v_fee_due bigint;
    v_charged bigint;
    v_fee bigint;
    v_released bigint;
    v_credit_txn bigint;
    v_touched bigint[] := ARRAY[]::bigint[];
BEGIN
    -- Counters other settlements move too, locked first in one order: key counters by key, then BYOK
    -- month counters of users, then of organizations, by id (the caller lists them only when the batch
    -- moves more than one of a kind: a single one is locked where it is written, before any account).
    IF cardinality(p_keys) > 0 THEN
        PERFORM 1 FROM keys_providerkeystats k WHERE k.key_id = ANY (p_keys) ORDER BY k.key_id FOR UPDATE;
    END IF;
    IF cardinality(p_byok_users) > 0 THEN
        PERFORM 1 FROM billing_byokmonthlyusage u
        WHERE u.user_id = ANY (p_byok_users) AND u.month = ANY (p_months) ORDER BY u.id FOR UPDATE;
    END IF;
    IF cardinality(p_byok_orgs) > 0 THEN
        PERFORM 1 FROM billing_byokmonthlyusage u
        WHERE u.organization_id = ANY (p_byok_orgs) AND u.month = ANY (p_months) ORDER BY u.id FOR UPDATE;
    END IF;
    v_platform := ARRAY[
        (SELECT a.id FROM billing_account a WHERE a.kind = 'revenue' AND a.user_id IS NULL AND a.organization_id IS NULL),
        (SELECT a.id FROM billing_account a
         WHERE a.kind = 'pool_rewards' AND a.user_id IS NULL AND a.organization_id IS NULL),
        (SELECT a.id FROM billing_account a
         WHERE a.kind = 'exchange_payouts' AND a.user_id IS NULL AND a.organization_id IS NULL)
    ];
    -- Accounts are moved once each, at the end, so that their rows (a payer's is also wanted by the
    -- holds of its next requests) are locked only from there to the commit. A payer's balance is read
    -- when first needed, unlocked; should a concurrent debit leave less than the charges taken from
    -- what was read, the not-below-zero CHECK refuses the batch and the caller settles it again with
    -- the accounts locked first (p_lock_first), so that what is read is what is charged.
    IF p_lock_first THEN
        PERFORM 1 FROM billing_account a
        WHERE a.id = ANY (p_accounts || ARRAY(SELECT b.id FROM billing_account b WHERE b.id = ANY (v_platform)
                                              AND b.kind = ANY (p_platform)))
        ORDER BY a.id FOR UPDATE;
    END IF;

    FOR s IN SELECT * FROM json_to_recordset(p_batch) AS x(
    request_id text, created_at timestamptz, api_key_id bigint, requester_id bigint, organization_id bigint,
    route text, task text, provider_id bigint, model text, provider_key_id bigint, stream boolean, outcome text,
    upstream_status integer, error_code text, prompt_tokens bigint, completion_tokens bigint,
    usage_estimated boolean, input_price bigint, output_price bigint, cost bigint, reward bigint,
    payout_rate numeric, latency_ms bigint, ttfb_ms bigint,
    payer bigint, charge bigint, charge_key text, charge_memo text,
    byok_user bigint, byok_org bigint, month date, free bigint, fee bigint, fee_key text, fee_memo text,
    hold_ids text[], key_id bigint, stats boolean, touch boolean,
    credit bigint, credit_account bigint, credit_source text, credit_kind text, credit_key text, credit_memo text,
    earning boolean, earning_account bigint, settled_cost bigint, rate numeric, rate_rule bigint,
    rate_scope text, earned bigint
) LOOP
        out_request_id := s.request_id;
        IF EXISTS (SELECT 1 FROM pool_requestrecord q WHERE q.request_id = s.request_id) THEN
            -- Settled before: nothing moves again.
            out_inserted := false; out_charged := 0; out_fee := 0;
            RETURN NEXT;
            CONTINUE;
        END IF;
        v_balance := 0;
        v_i := NULL;
        IF s.payer IS NOT NULL THEN
            v_i := array_position(v_ids, s.payer);
            IF v_i IS NULL THEN
                v_ids := v_ids || s.payer; v_delta := v_delta || 0::bigint; v_held := v_held || 0::bigint;
                v_left := v_left || NULL::bigint;
                v_i := cardinality(v_ids);
            END IF;
            IF v_left[v_i] IS NULL THEN
                SELECT a.balance + v_delta[v_i] INTO v_balance FROM billing_account a WHERE a.id = s.payer;
                v_left[v_i] := v_balance;
            END IF;
            v_balance := v_left[v_i];
        END IF;
        v_fee_due := 0;
        IF s.byok_org IS NOT NULL THEN
            INSERT INTO billing_byokmonthlyusage AS u (user_id, organization_id, month, requests)
            VALUES (NULL, s.byok_org, s.month, 1)
            ON CONFLICT (organization_id, month) WHERE organization_id IS NOT NULL
            DO UPDATE SET requests = u.requests + 1 RETURNING u.requests INTO v_count;
        ELSIF s.byok_user IS NOT NULL THEN
            INSERT INTO billing_byokmonthlyusage AS u (user_id, organization_id, month, requests)
            VALUES (s.byok_user, NULL, s.month, 1)
            ON CONFLICT (user_id, month) WHERE user_id IS NOT NULL
            DO UPDATE SET requests = u.requests + 1 RETURNING u.requests INTO v_count;
        END IF;
        IF (s.byok_org IS NOT NULL OR s.byok_user IS NOT NULL) AND v_count > s.free THEN
            v_fee_due := s.fee;
        END IF;
        -- The charge, then the fee, each capped at what the balance still has (pool.sql.charge_and_fee).
        v_charged := LEAST(s.charge, GREATEST(v_balance, 0));
        v_fee := LEAST(v_fee_due, GREATEST(v_balance - v_charged, 0));
        INSERT INTO pool_requestrecord (request_id, created_at, api_key_id, requester_id, organization_id, route,
            task, provider_id, model, provider_key_id, stream, outcome, upstream_status, error_code, prompt_tokens,
            completion_tokens, usage_estimated, input_price, output_price, cost, reward, payout_rate, latency_ms,
            ttfb_ms, charged, fee, settled_at)
        VALUES (s.request_id, s.created_at, s.api_key_id, s.requester_id, s.organization_id, s.route, s.task,
            s.provider_id, s.model, s.provider_key_id, s.stream, s.outcome, s.upstream_status, s.error_code,
            s.prompt_tokens, s.completion_tokens, s.usage_estimated, s.input_price, s.output_price, s.cost,
            s.reward, s.payout_rate, s.latency_ms, s.ttfb_ms, v_charged + v_fee, v_fee, now());
        IF v_i IS NOT NULL THEN
            WITH released AS (
                DELETE FROM billing_balancehold h WHERE h.request_id = ANY (s.hold_ids) RETURNING h.amount
            ) SELECT COALESCE(SUM(amount), 0) INTO v_released FROM released;
            v_left[v_i] := v_left[v_i] - v_charged - v_fee;
            v_delta[v_i] := v_delta[v_i] - v_charged - v_fee;
            v_held[v_i] := v_held[v_i] - v_released;
        END IF;
        IF v_charged > 0 THEN
            PERFORM pool_ledger_post(s.charge_key, 'usage', s.charge_memo, s.payer, v_platform[1], v_charged);
        END IF;
        IF v_fee > 0 THEN
            PERFORM pool_ledger_post(s.fee_key, 'byok_fee', s.fee_memo, s.payer, v_platform[1], v_fee);
        END IF;
        v_credit_txn := NULL;
        IF s.credit IS NOT NULL THEN
            v_j := array_position(v_kinds, s.credit_source);
            v_credit_txn := pool_ledger_post(s.credit_key, s.credit_kind, s.credit_memo, v_platform[v_j],
                                             s.credit_account, s.credit);
            v_i := array_position(v_ids, s.credit_account);
            IF v_i IS NULL THEN
                v_ids := v_ids || s.credit_account; v_delta := v_delta || 0::bigint;
                v_held := v_held || 0::bigint; v_left := v_left || NULL::bigint;
                v_i := cardinality(v_ids);
            END IF;
            v_delta[v_i] := v_delta[v_i] + s.credit;
            v_left[v_i] := v_left[v_i] + s.credit;  -- stays NULL until read as a payer
            v_i := array_position(v_ids, v_platform[v_j]);
            IF v_i IS NULL THEN
                v_ids := v_ids || v_platform[v_j]; v_delta := v_delta || 0::bigint;
                v_held := v_held || 0::bigint; v_left := v_left || NULL::bigint;
                v_i := cardinality(v_ids);
            END IF;
            v_delta[v_i] := v_delta[v_i] - s.credit;
        END IF;
        IF v_charged + v_fee > 0 THEN
            v_i := array_position(v_ids, v_platform[1]);
            IF v_i IS NULL THEN
                v_ids := v_ids || v_platform[1]; v_delta := v_delta || 0::bigint;
                v_held := v_held || 0::bigint; v_left := v_left || NULL::bigint;
                v_i := cardinality(v_ids);
            END IF;
            v_delta[v_i] := v_delta[v_i] + v_charged + v_fee;
        END IF;
        IF s.earning THEN
            INSERT INTO exchange_exchangeearning (provider_key_id, account_id, request_id, settled_cost,
                rate_percent, rate_rule_id, rate_scope, amount, ledger_transaction_id, created_at)
            VALUES (s.key_id, s.earning_account, s.request_id, s.settled_cost, s.rate, s.rate_rule, s.rate_scope,
                s.earned, v_credit_txn, now());
        END IF;
        IF s.stats THEN
            INSERT INTO keys_providerkeystats AS k (key_id, requests_served, prompt_tokens, completion_tokens,
                credits_earned, updated_at)
            VALUES (s.key_id, 1, s.prompt_tokens, s.completion_tokens, COALESCE(s.credit, 0), now())
            ON CONFLICT (key_id) DO UPDATE SET requests_served = k.requests_served + 1,
                prompt_tokens = k.prompt_tokens + EXCLUDED.prompt_tokens,
                completion_tokens = k.completion_tokens + EXCLUDED.completion_tokens,
                credits_earned = k.credits_earned + EXCLUDED.credits_earned, updated_at = EXCLUDED.updated_at;
        END IF;
        IF s.touch THEN
            v_touched := v_touched || s.api_key_id;
        END IF;
        -- The request's lease on its key ends with it.
        DELETE FROM keys_providerkeylease l WHERE l.request_id = s.request_id;
        out_inserted := true; out_charged := v_charged; out_fee := v_fee;
        RETURN NEXT;
    END LOOP;

    -- The accounts move last, once each, in id order (every writer of accounts locks them in that order).
    FOR r IN SELECT u.id, u.delta, u.held FROM unnest(v_ids, v_delta, v_held) AS u(id, delta, held) ORDER BY u.id
    LOOP
        IF r.delta <> 0 OR r.held <> 0 THEN
            UPDATE billing_account SET balance = balance + r.delta, held = held + r.held WHERE id = r.id;
        END IF;
    END LOOP;
    IF cardinality(v_touched) > 0 THEN
        PERFORM 1 FROM accounts_apikey k WHERE k.id = ANY (v_touched) ORDER BY k.id FOR UPDATE;
        UPDATE accounts_apikey SET last_used_at = now()
        WHERE id = ANY (v_touched) AND (last_used_at IS NULL OR last_used_at < now() - interval '60 seconds');
    END IF;
END;
$$;
