-- exchange 0002: the exchange's own SQL for the gateway's settlement, which composes it (pool/sql/). The
-- exchange owns every write to its earnings; this is the form that runs a batch at a time inside the
-- gateway's statement. Frozen: a change to the function ships as a new file with a new migration.
--
-- - exchange_earnings_insert: the batch's earning rows, in one statement: per request the key, the
--   owner's frozen account, the settled cost, what was collected from the payer (the cost capped at
--   their balance), the rate as it was (percent, rule, scope), the amount earned (the rate of what was
--   collected: the caller computed it after the cap) and the idempotency key of the ledger transaction
--   that credited it (NULL: nothing was credited, the row names no transaction). The transaction is
--   billing's, written before this in the same statement; it is only read here.

CREATE OR REPLACE FUNCTION exchange_earnings_insert(
    p_keys bigint[], p_accounts bigint[], p_requests text[], p_costs bigint[], p_collected bigint[],
    p_rates numeric[], p_rules bigint[], p_scopes text[], p_amounts bigint[], p_txn_keys text[]
)
RETURNS void LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    INSERT INTO exchange_exchangeearning (provider_key_id, account_id, request_id, settled_cost, collected,
        rate_percent, rate_rule_id, rate_scope, amount, ledger_transaction_id, created_at)
    SELECT e.key_id, e.account, e.request_id, e.cost, e.collected, e.rate, e.rule, e.scope, e.amount, t.id, now()
    FROM unnest(p_keys, p_accounts, p_requests, p_costs, p_collected, p_rates, p_rules, p_scopes, p_amounts,
                p_txn_keys) AS e(key_id, account, request_id, cost, collected, rate, rule, scope, amount, txn_key)
    LEFT JOIN billing_ledgertransaction t ON t.idempotency_key = e.txn_key;
END;
$$;
