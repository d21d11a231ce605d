-- pool 0010: the gateway's hot-path functions, as migration pool/0010_api_key_spend_counter installs them.
-- Frozen: a change to the functions ships as a new file with a new migration.
--
-- What changed since 0009:
-- - pool_settle adds what each request of an API key with a monthly spend limit was charged (fee
--   included) to the key's month counter (billing's billing_api_key_spend_add, once for the batch, after
--   the keys' counters and before any account), so that the limit reads one row instead of summing the
--   month's requests. Only for such keys (`limited`): the others pay no write for a limit they lack,
--   and a key's limit is set at its creation only (accounts.models.ApiKey.monthly_limit).
--
-- Why functions: PostgreSQL's cost of a request was mostly fixed cost per statement and per
-- transaction (a round trip, executor start-up, commit: ~120 µs for a one-row write on its own, ~22 µs
-- inside a PL/pgSQL loop), so the requests that arrive while a statement is in flight go together in
-- the next one (pool.hotpath.batch), and these functions do each request's steps in turn: in order,
-- each seeing the ones before it, exactly as if they had come one by one.
--
-- - pool_key_take: the least-recently-used pick. It must be strictly least recently used across every
--   gateway process, and a single statement cannot be: its snapshot is taken when it starts, so a pick
--   that waited for its turn would still see the order from before the pick it waited for, and
--   FOR UPDATE SKIP LOCKED alone lets concurrent picks pass over the true least-recently-used key while
--   another pick holds it for a moment (the rotation drifts). Here a pick first takes its provider's
--   turn (a transaction-scoped advisory lock: no table row is held), then runs the UPDATE as a
--   statement of its own (a volatile function's statements each get a fresh snapshot), so it sees every
--   pick committed before its turn. The turn ends when the caller's transaction commits; the caller
--   makes the picks its last step. Which keys may serve stays with the caller (the candidate list is
--   compiled from keys.selectors); this only orders, locks, stamps and leases. SKIP LOCKED still passes
--   over a key that another writer (a state transition) holds.
-- - pool_settle: settle a batch of requests, exactly once each (a request already recorded moves
--   nothing again): the request record, the charge then the BYOK fee each capped at what the balance
--   still has, the BYOK month count, the reward or exchange earning (the rate of what was charged), ledger
--   transactions and entries (billing's, written for the whole batch after its requests' steps),
--   cached balances and the holds' release (billing's), the key's counters, the API key's month spend
--   (when it has a limit) and last use, the end of the lease (each app's function, once per batch). What each
--   request moves was decided by pool.services; this applies it. Lock order: counters other
--   settlements move too are locked first, in one order (BYOK month counters, then key counters, then
--   API key month spend counters); accounts are moved once each, last, in id
--   order (every writer of accounts locks them in that order), so that their rows are held only from
--   there to the commit.

DROP FUNCTION IF EXISTS pool_settle(json, bigint[], text[], bigint[], bigint[], bigint[], date[], boolean, text[],
    text, text, interval);

-- The advisory lock's first key, 7201701: "picks of provider N" (the second key is the provider's id).
CREATE OR REPLACE FUNCTION pool_key_take(p_provider bigint, p_candidates bigint[], p_request text)
RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    taken bigint;
BEGIN
    IF p_candidates IS NULL OR cardinality(p_candidates) = 0 THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock(7201701, mod(p_provider, 2147483647)::integer);
    -- A statement of its own after the turn (a fresh snapshot): the stamp and the lease together.
    WITH stamped AS (
        UPDATE keys_providerkey SET lru_seq = nextval('pool_key_lru_seq'), last_used_at = now()
        WHERE id = (
            SELECT k.id FROM keys_providerkey k WHERE k.id = ANY (p_candidates)
            ORDER BY k.lru_seq, k.id LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED
        )
        RETURNING id
    )
    INSERT INTO keys_providerkeylease (key_id, request_id, created_at)
    SELECT stamped.id, p_request, now() FROM stamped
    RETURNING key_id INTO taken;
    RETURN taken;
END;
$$;

CREATE OR REPLACE FUNCTION pool_settle(
    p_batch json, p_accounts bigint[], p_platform text[], p_byok_users bigint[], p_byok_orgs bigint[], p_months date[], p_lock_first boolean, p_platform_kinds text[], p_charge_kind text,
    p_fee_kind text, p_touch_after interval
)
RETURNS TABLE(out_request_id text, out_inserted boolean, out_charged bigint, out_fee bigint, out_reward bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    s record;
    v_kinds text[] := p_platform_kinds;  -- revenue, pool rewards, exchange payouts (pool.hotpath.settle)
    v_platform bigint[];  -- those accounts' ids, in that order
    -- Every account the batch moves, with what it moves; the payers' balances as the batch leaves them.
    v_ids bigint[] := ARRAY[]::bigint[];
    v_delta bigint[] := ARRAY[]::bigint[];
    v_release text[] := ARRAY[]::text[];  -- the batch's holds, released with the balance moves
    v_left bigint[] := ARRAY[]::bigint[];  -- NULL until the account is read (it is read as a payer)
    v_i integer;
    v_j integer;
    v_balance bigint;
    v_count bigint;
    v_fee_due bigint;
    v_charged bigint;
    v_fee bigint;
    v_credit bigint;  -- the reward or earning credited to the key's owner (0: none)
    v_touched bigint[] := ARRAY[]::bigint[];
    -- The batch's ledger transactions (two entries each: from, to) and exchange earnings, written
    -- together after the loop: one statement for the batch rather than one per request. NULL until
    -- the first append (array_append makes the array; unnest reads NULL as no rows).
    l_key text[];
    l_kind text[];
    l_memo text[];
    l_from bigint[];
    l_to bigint[];
    l_amount bigint[];
    k_key bigint[];  -- the key counters' additions (keys_stats_add) and the leases to end (keys_leases_end)
    k_prompt bigint[];
    k_completion bigint[];
    k_credit bigint[];
    k_lease text[];
    e_key bigint[];
    e_account bigint[];
    e_request text[];
    e_cost bigint[];
    e_collected bigint[];
    e_rate numeric[];
    e_rule bigint[];
    e_scope text[];
    e_amount bigint[];
    e_txn_key text[];  -- the credit's ledger transaction (NULL: nothing credited)
    a_key bigint[];  -- the API keys' month spend (billing_api_key_spend_add)
    a_month date[];
    a_amount bigint[];
BEGIN
    -- Counters other settlements move too, locked first in one order: BYOK month counters of users,
    -- then of organizations, by id (the caller lists them only when the batch moves more than one: a
    -- single one is locked where it is written), then key counters (keys_stats_add, after the loop, in
    -- key order), all before any account.
    IF cardinality(p_byok_users) > 0 THEN
        PERFORM 1 FROM billing_byokmonthlyusage u
        WHERE u.user_id = ANY (p_byok_users) AND u.month = ANY (p_months) ORDER BY u.id FOR UPDATE;
    END IF;
    IF cardinality(p_byok_orgs) > 0 THEN
        PERFORM 1 FROM billing_byokmonthlyusage u
        WHERE u.organization_id = ANY (p_byok_orgs) AND u.month = ANY (p_months) ORDER BY u.id FOR UPDATE;
    END IF;
    -- In v_kinds' order; NULL for one not made yet (a ledger entry then refuses it: PlatformAccountMissing).
    SELECT ARRAY[max(a.id) FILTER (WHERE a.kind = v_kinds[1]), max(a.id) FILTER (WHERE a.kind = v_kinds[2]),
                 max(a.id) FILTER (WHERE a.kind = v_kinds[3])]
    INTO v_platform FROM billing_account a
    WHERE a.kind = ANY (v_kinds) AND a.user_id IS NULL AND a.organization_id IS NULL;
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
    usage_estimated boolean, input_price bigint, output_price bigint, cost bigint,
    payout_rate numeric, latency_ms bigint, ttfb_ms bigint,
    payer bigint, charge bigint, charge_key text, charge_memo text,
    byok_user bigint, byok_org bigint, month date, free bigint, fee bigint, fee_key text, fee_memo text,
    hold_ids text[], key_id bigint, stats boolean, touch boolean, limited boolean,
    credit bigint, credit_account bigint, credit_source text, credit_kind text, credit_key text, credit_memo text,
    earning boolean, earning_account bigint, settled_cost bigint, rate numeric, rate_bp bigint, rate_rule bigint,
    rate_scope text
) LOOP
        out_request_id := s.request_id;
        IF EXISTS (SELECT 1 FROM pool_requestrecord q WHERE q.request_id = s.request_id) THEN
            -- Settled before: nothing moves again.
            out_inserted := false; out_charged := 0; out_fee := 0; out_reward := 0;
            RETURN NEXT;
            CONTINUE;
        END IF;
        v_balance := 0;
        v_i := NULL;
        IF s.payer IS NOT NULL THEN
            v_i := array_position(v_ids, s.payer);
            IF v_i IS NULL THEN
                v_ids := v_ids || s.payer; v_delta := v_delta || 0::bigint;
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
        IF s.byok_org IS NOT NULL OR s.byok_user IS NOT NULL THEN
            v_count := billing_byok_count(s.byok_user, s.byok_org, s.month);
            IF billing_byok_fee_due(v_count, s.free) THEN
                v_fee_due := s.fee;
            END IF;
        END IF;
        -- The charge, then the fee, each capped at what the balance still has.
        v_charged := LEAST(s.charge, GREATEST(v_balance, 0));
        v_fee := LEAST(v_fee_due, GREATEST(v_balance - v_charged, 0));
        -- What the key's owner is credited. An exchange earning: the rate of what was collected (the
        -- charge as capped just above), rounded as core.money.percent_of rounds
        -- (basis_points_of_sql('v_charged', 's.rate_bp')); 0 collected, 0 earned. A pool reward: the
        -- amount decided in Python, on the notional cost (nothing is collected on the pool route).
        IF s.earning THEN
            v_credit := (((((v_charged) / 10000) * (s.rate_bp)) + (((v_charged) - ((v_charged) / 10000) * 10000) * (s.rate_bp)) / 10000) + CASE WHEN (2 * ((((v_charged) - ((v_charged) / 10000) * 10000) * (s.rate_bp)) - (((v_charged) - ((v_charged) / 10000) * 10000) * (s.rate_bp)) / 10000 * 10000)) > 10000 OR ((2 * ((((v_charged) - ((v_charged) / 10000) * 10000) * (s.rate_bp)) - (((v_charged) - ((v_charged) / 10000) * 10000) * (s.rate_bp)) / 10000 * 10000)) = 10000 AND ((((v_charged) / 10000) * (s.rate_bp)) + (((v_charged) - ((v_charged) / 10000) * 10000) * (s.rate_bp)) / 10000) - ((((v_charged) / 10000) * (s.rate_bp)) + (((v_charged) - ((v_charged) / 10000) * 10000) * (s.rate_bp)) / 10000) / 2 * 2 = 1) THEN 1 ELSE 0 END);
        ELSE
            v_credit := COALESCE(s.credit, 0);
        END IF;
        INSERT INTO pool_requestrecord (request_id, created_at, api_key_id, requester_id, organization_id, route,
            task, provider_id, model, provider_key_id, stream, outcome, upstream_status, error_code, prompt_tokens,
            completion_tokens, usage_estimated, input_price, output_price, cost, reward, payout_rate, latency_ms,
            ttfb_ms, charged, fee, settled_at)
        VALUES (s.request_id, s.created_at, s.api_key_id, s.requester_id, s.organization_id, s.route, s.task,
            s.provider_id, s.model, s.provider_key_id, s.stream, s.outcome, s.upstream_status, s.error_code,
            s.prompt_tokens, s.completion_tokens, s.usage_estimated, s.input_price, s.output_price, s.cost,
            v_credit, s.payout_rate, s.latency_ms, s.ttfb_ms, v_charged + v_fee, v_fee, now());
        -- The request's holds end with it (there are only holds with a payer), and its lease on its key
        -- (keys_leases_end, for the batch after the loop).
        IF v_i IS NOT NULL THEN
            v_release := v_release || s.hold_ids;
            v_left[v_i] := v_left[v_i] - v_charged - v_fee;
            v_delta[v_i] := v_delta[v_i] - v_charged - v_fee;
        END IF;
        k_lease := array_append(k_lease, s.request_id);
        IF v_charged > 0 THEN
            l_key := array_append(l_key, s.charge_key); l_kind := array_append(l_kind, p_charge_kind);
            l_memo := array_append(l_memo, s.charge_memo); l_from := array_append(l_from, s.payer);
            l_to := array_append(l_to, v_platform[1]); l_amount := array_append(l_amount, v_charged);
        END IF;
        IF v_fee > 0 THEN
            l_key := array_append(l_key, s.fee_key); l_kind := array_append(l_kind, p_fee_kind);
            l_memo := array_append(l_memo, s.fee_memo); l_from := array_append(l_from, s.payer);
            l_to := array_append(l_to, v_platform[1]); l_amount := array_append(l_amount, v_fee);
        END IF;
        IF v_credit > 0 THEN
            v_j := array_position(v_kinds, s.credit_source);
            l_key := array_append(l_key, s.credit_key); l_kind := array_append(l_kind, s.credit_kind);
            l_memo := array_append(l_memo, s.credit_memo); l_from := array_append(l_from, v_platform[v_j]);
            l_to := array_append(l_to, s.credit_account); l_amount := array_append(l_amount, v_credit);
            v_i := array_position(v_ids, s.credit_account);
            IF v_i IS NULL THEN
                v_ids := v_ids || s.credit_account; v_delta := v_delta || 0::bigint;
                v_left := v_left || NULL::bigint;
                v_i := cardinality(v_ids);
            END IF;
            v_delta[v_i] := v_delta[v_i] + v_credit;
            v_left[v_i] := v_left[v_i] + v_credit;  -- stays NULL until read as a payer
            v_i := array_position(v_ids, v_platform[v_j]);
            IF v_i IS NULL THEN
                v_ids := v_ids || v_platform[v_j]; v_delta := v_delta || 0::bigint;
                v_left := v_left || NULL::bigint;
                v_i := cardinality(v_ids);
            END IF;
            v_delta[v_i] := v_delta[v_i] - v_credit;
        END IF;
        IF v_charged + v_fee > 0 THEN
            v_i := array_position(v_ids, v_platform[1]);
            IF v_i IS NULL THEN
                v_ids := v_ids || v_platform[1]; v_delta := v_delta || 0::bigint;
                v_left := v_left || NULL::bigint;
                v_i := cardinality(v_ids);
            END IF;
            v_delta[v_i] := v_delta[v_i] + v_charged + v_fee;
        END IF;
        IF s.earning THEN
            e_key := array_append(e_key, s.key_id); e_account := array_append(e_account, s.earning_account);
            e_request := array_append(e_request, s.request_id); e_cost := array_append(e_cost, s.settled_cost);
            e_collected := array_append(e_collected, v_charged);
            e_rate := array_append(e_rate, s.rate); e_rule := array_append(e_rule, s.rate_rule);
            e_scope := array_append(e_scope, s.rate_scope); e_amount := array_append(e_amount, v_credit);
            e_txn_key := array_append(e_txn_key, CASE WHEN v_credit > 0 THEN s.credit_key END);
        END IF;
        IF s.stats THEN
            k_key := array_append(k_key, s.key_id); k_prompt := array_append(k_prompt, s.prompt_tokens);
            k_completion := array_append(k_completion, s.completion_tokens);
            k_credit := array_append(k_credit, v_credit);
        END IF;
        IF s.touch THEN
            v_touched := v_touched || s.api_key_id;
        END IF;
        IF v_charged + v_fee > 0 AND s.limited THEN
            a_key := array_append(a_key, s.api_key_id); a_month := array_append(a_month, s.month);
            a_amount := array_append(a_amount, v_charged + v_fee);
        END IF;
        out_inserted := true; out_charged := v_charged; out_fee := v_fee; out_reward := v_credit;
        RETURN NEXT;
    END LOOP;

    -- Each app writes its own tables, once for the batch: the keys' counters (locked in key order,
    -- before any account) and the end of the leases (keys'), the API keys' month spend (billing's, in
    -- key order, before any account), the ledger (billing's), then the exchange earnings with the
    -- transaction that credited them (the exchange's).
    IF k_key IS NOT NULL THEN
        PERFORM keys_stats_add(k_key, k_prompt, k_completion, k_credit);
    END IF;
    IF a_key IS NOT NULL THEN
        PERFORM billing_api_key_spend_add(a_key, a_month, a_amount);
    END IF;
    IF k_lease IS NOT NULL THEN
        PERFORM keys_leases_end(k_lease);
    END IF;
    IF l_key IS NOT NULL THEN
        PERFORM billing_ledger_post_batch(l_key, l_kind, l_memo, l_from, l_to, l_amount);
    END IF;
    IF e_key IS NOT NULL THEN
        PERFORM exchange_earnings_insert(e_key, e_account, e_request, e_cost, e_collected, e_rate, e_rule,
                                         e_scope, e_amount, e_txn_key);
    END IF;

    -- The accounts move last, once each, in id order, and the holds end with them (billing's: every
    -- writer of accounts locks them in that order).
    PERFORM billing_balances_move(v_ids, v_delta, v_release);
    IF cardinality(v_touched) > 0 THEN
        PERFORM accounts_api_keys_touch(v_touched, p_touch_after);  -- accounts'
    END IF;
END;
$$;
