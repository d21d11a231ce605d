-- accounts 0002: accounts' own SQL for the gateway's settlement, which composes it (pool/sql/). Accounts
-- owns every write to its API keys; this is the form that runs a batch at a time inside the gateway's
-- statement. Frozen: a change to the function ships as a new file with a new migration.
--
-- - accounts_api_keys_touch: stamp the last use of the batch's API keys, in one statement after their
--   rows are locked in id order (every writer of API keys locks them in that order), skipping those
--   stamped within p_after (accounts.services.LAST_USED_RESOLUTION: a write per key per interval, not
--   per request).

CREATE OR REPLACE FUNCTION accounts_api_keys_touch(p_ids bigint[], p_after interval)
RETURNS void LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM 1 FROM accounts_apikey k WHERE k.id = ANY (p_ids) ORDER BY k.id FOR UPDATE;
    UPDATE accounts_apikey SET last_used_at = now()
    WHERE id = ANY (p_ids) AND (last_used_at IS NULL OR last_used_at < now() - p_after);
END;
$$;
