"""Retention of `agent_logs`: every agent id of this installation, the live agent's and its simulated runs'."""
from __future__ import annotations

DERIVED_IDS = ("{agent}-check",)
SIMULATED_ID_PREFIXES = ("{agent}-day-", "{agent}-replay-")


async def purge_old_logs(pool, *, agent_id: str, days: int, replay_days: int | None = None,
                         batch: int = 10_000) -> int:
    """Retention, in small batches: agent_logs rows of this agent (and its broker checks) older than `days`, and of
    its day and replay runs (`<agent>-day-...`, `<agent>-replay-...`) older than `replay_days` (default `days`)."""
    live = [agent_id, *(d.format(agent=agent_id) for d in DERIVED_IDS)]
    simulated = [p.format(agent=agent_id) for p in SIMULATED_ID_PREFIXES]
    total = 0
    # ^@ is "starts with": unlike LIKE, it gives no meaning to the _ and % an agent id may hold
    for where, arg, keep in (("agent_id = ANY($1::text[])", live, days),
                             ("agent_id ^@ ANY($1::text[])", simulated,
                              replay_days if replay_days is not None else days)):
        while True:
            deleted = await pool.fetchval(
                f"""WITH doomed AS (SELECT id FROM agent_logs WHERE {where}
                                    AND timestamp < now() - make_interval(days => $2) LIMIT $3)
                    , gone AS (DELETE FROM agent_logs a USING doomed d WHERE a.id = d.id RETURNING 1)
                    SELECT count(*) FROM gone""", arg, keep, batch)
            total += deleted
            if deleted < batch:
                break
    return total
