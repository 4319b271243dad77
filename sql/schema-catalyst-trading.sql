-- Catalyst Trading System schema.
--
-- Apply with:  psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/schema-catalyst-trading.sql
-- The agent applies it itself on start when schema_version is behind. Applying it twice changes nothing:
-- every statement is IF NOT EXISTS / ON CONFLICT DO NOTHING, so `psql -f` on a live database is an upgrade.
--
-- Conventions: every row carries agent_id (several agents may share one database); money is NUMERIC
-- (exact); times are timestamptz (stored UTC); quantities are integer shares.

CREATE TABLE IF NOT EXISTS schema_version (
    version     integer     PRIMARY KEY,
    description text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- ------------------------------------------------------------------ securities
CREATE TABLE IF NOT EXISTS securities (
    agent_id    text        NOT NULL,
    symbol      text        NOT NULL,
    exchange    text        NOT NULL,
    currency    text        NOT NULL,
    name        text        NOT NULL DEFAULT '',
    lot_size    integer     NOT NULL CHECK (lot_size > 0),
    tick_scheme text        NOT NULL CHECK (tick_scheme IN ('hkex', 'us')),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_id, symbol)
);

-- ------------------------------------------------------------------ trading_cycles
CREATE TABLE IF NOT EXISTS trading_cycles (
    cycle_id           uuid        PRIMARY KEY,
    agent_id           text        NOT NULL,
    mode               text        NOT NULL CHECK (mode IN ('scan', 'trade', 'close', 'heartbeat', 'replay', 'monitor')),
    engine             text        CHECK (engine IN ('claude', 'rules')),
    status             text        NOT NULL DEFAULT 'running'
                                   CHECK (status IN ('running', 'completed', 'failed', 'market_closed',
                                                     'budget_exhausted', 'ai_unavailable', 'interrupted')),
    started_at         timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz,
    turns              integer     NOT NULL DEFAULT 0 CHECK (turns >= 0),
    input_tokens       bigint      NOT NULL DEFAULT 0 CHECK (input_tokens >= 0),
    output_tokens      bigint      NOT NULL DEFAULT 0 CHECK (output_tokens >= 0),
    cache_write_tokens bigint      NOT NULL DEFAULT 0 CHECK (cache_write_tokens >= 0),
    cache_read_tokens  bigint      NOT NULL DEFAULT 0 CHECK (cache_read_tokens >= 0),
    cost_usd           numeric     NOT NULL DEFAULT 0 CHECK (cost_usd >= 0),
    orders_placed      integer     NOT NULL DEFAULT 0 CHECK (orders_placed >= 0),
    summary            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    error              text
);
CREATE INDEX IF NOT EXISTS trading_cycles_agent_started ON trading_cycles (agent_id, started_at DESC);

-- ------------------------------------------------------------------ positions
-- Positions change only from fills (or reconciliation against the broker, with an audit row).
CREATE TABLE IF NOT EXISTS positions (
    position_id     bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id        text        NOT NULL,
    symbol          text        NOT NULL,
    status          text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    quantity        integer     NOT NULL CHECK (quantity >= 0),
    avg_entry_price numeric     NOT NULL CHECK (avg_entry_price >= 0),
    stop_loss       numeric     CHECK (stop_loss > 0),
    take_profit     numeric     CHECK (take_profit > 0),
    high_water_mark numeric,
    realized_pnl    numeric     NOT NULL DEFAULT 0,
    fees            numeric     NOT NULL DEFAULT 0 CHECK (fees >= 0),
    opened_at       timestamptz NOT NULL DEFAULT now(),
    closed_at       timestamptz,
    exit_reason     text,
    CHECK ((status = 'open') = (closed_at IS NULL))
);
CREATE UNIQUE INDEX IF NOT EXISTS positions_one_open_per_symbol
    ON positions (agent_id, symbol) WHERE status = 'open';
CREATE INDEX IF NOT EXISTS positions_agent_status ON positions (agent_id, status, opened_at DESC);

-- ------------------------------------------------------------------ orders
-- Write-ahead: the row (status pending_submit) is committed before the broker is called.
CREATE TABLE IF NOT EXISTS orders (
    order_id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id        text        NOT NULL,
    client_order_id text        NOT NULL UNIQUE,
    broker_order_id text,
    cycle_id        uuid        REFERENCES trading_cycles (cycle_id),
    position_id     bigint      REFERENCES positions (position_id),
    symbol          text        NOT NULL,
    side            text        NOT NULL CHECK (side IN ('buy', 'sell')),
    order_type      text        NOT NULL CHECK (order_type IN ('market', 'limit')),
    intent          text        NOT NULL CHECK (intent IN ('entry', 'exit', 'stop_loss', 'take_profit',
                                                          'trailing_stop', 'signal_exit', 'kill_switch',
                                                          'end_of_day', 'reconcile')),
    quantity        integer     NOT NULL CHECK (quantity > 0),
    limit_price     numeric     CHECK (limit_price > 0),
    stop_loss       numeric     CHECK (stop_loss > 0),          -- for entries: carried to the position
    take_profit     numeric     CHECK (take_profit > 0),
    status          text        NOT NULL DEFAULT 'pending_submit'
                                CHECK (status IN ('pending_submit', 'submitted', 'partially_filled', 'filled',
                                                  'cancel_pending', 'cancelled', 'rejected', 'expired')),
    filled_quantity integer     NOT NULL DEFAULT 0 CHECK (filled_quantity >= 0),
    avg_fill_price  numeric     CHECK (avg_fill_price > 0),
    fees            numeric     NOT NULL DEFAULT 0 CHECK (fees >= 0),
    reason          text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    submitted_at    timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (filled_quantity <= quantity),
    CHECK ((order_type = 'limit') = (limit_price IS NOT NULL))
);
CREATE INDEX IF NOT EXISTS orders_agent_status ON orders (agent_id, status);
CREATE INDEX IF NOT EXISTS orders_agent_symbol_created ON orders (agent_id, symbol, created_at DESC);
CREATE INDEX IF NOT EXISTS orders_position ON orders (position_id);

-- Every execution the broker reported; positions are derived from these.
CREATE TABLE IF NOT EXISTS fills (
    fill_row_id   bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id      text        NOT NULL,
    order_id      bigint      NOT NULL REFERENCES orders (order_id),
    broker_fill_id text       NOT NULL,
    symbol        text        NOT NULL,
    side          text        NOT NULL CHECK (side IN ('buy', 'sell')),
    quantity      integer     NOT NULL CHECK (quantity > 0),
    price         numeric     NOT NULL CHECK (price > 0),
    fee           numeric     NOT NULL DEFAULT 0 CHECK (fee >= 0),
    filled_at     timestamptz NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (agent_id, broker_fill_id)
);

-- ------------------------------------------------------------------ decisions
CREATE TABLE IF NOT EXISTS decisions (
    decision_id   bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id      text        NOT NULL,
    cycle_id      uuid        REFERENCES trading_cycles (cycle_id),
    symbol        text,
    action        text        NOT NULL,
    engine        text        CHECK (engine IN ('claude', 'rules', 'monitor', 'reconcile')),
    reasoning     text        NOT NULL DEFAULT '',
    verdict       jsonb,
    details       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    model         text,
    input_tokens  bigint      NOT NULL DEFAULT 0,
    output_tokens bigint      NOT NULL DEFAULT 0,
    cost_usd      numeric     NOT NULL DEFAULT 0 CHECK (cost_usd >= 0),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS decisions_agent_created ON decisions (agent_id, created_at DESC);

-- ------------------------------------------------------------------ scan_results
CREATE TABLE IF NOT EXISTS scan_results (
    scan_result_id bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id       text        NOT NULL,
    cycle_id       uuid        REFERENCES trading_cycles (cycle_id),
    scanned_at     timestamptz NOT NULL,
    symbol         text        NOT NULL,
    rank           integer     NOT NULL CHECK (rank > 0),
    score          numeric     NOT NULL,
    price          numeric     CHECK (price > 0),
    reasons        jsonb       NOT NULL DEFAULT '[]'::jsonb,
    metrics        jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS scan_results_agent_scanned ON scan_results (agent_id, scanned_at DESC, rank);

-- ------------------------------------------------------------------ patterns
CREATE TABLE IF NOT EXISTS patterns (
    pattern_id  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id    text        NOT NULL,
    cycle_id    uuid        REFERENCES trading_cycles (cycle_id),
    symbol      text        NOT NULL,
    pattern     text        NOT NULL,
    direction   text        NOT NULL CHECK (direction IN ('bullish', 'bearish', 'neutral')),
    confidence  numeric     NOT NULL CHECK (confidence >= 0 AND confidence <= 1),
    levels      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    bar_start   timestamptz NOT NULL,
    bar_end     timestamptz NOT NULL,
    detected_at timestamptz NOT NULL DEFAULT now(),
    CHECK (bar_start <= bar_end)
);
CREATE INDEX IF NOT EXISTS patterns_agent_symbol ON patterns (agent_id, symbol, detected_at DESC);

-- ------------------------------------------------------------------ agent_logs
-- Written in batches (COPY) by db_logger's background writer. id is a time-ordered UUID made by the writer,
-- so a batch replayed from the local spool after an outage is never inserted twice.
-- Retention: 30 days, by a batched DELETE that heartbeat and close runs perform (see README).
CREATE TABLE IF NOT EXISTS agent_logs (
    id        uuid        PRIMARY KEY,
    timestamp timestamptz NOT NULL,
    agent_id  text        NOT NULL,
    level     text        NOT NULL CHECK (level IN ('DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL')),
    logger    text        NOT NULL,
    message   text        NOT NULL,
    context   jsonb       NOT NULL DEFAULT '{}'::jsonb,
    exception text
);
-- Serves "recent errors" and "error rate by hour" (seed §7.3).
CREATE INDEX IF NOT EXISTS agent_logs_level_timestamp ON agent_logs (level, timestamp DESC);
-- Serves "activity for a symbol" (seed §7.3).
CREATE INDEX IF NOT EXISTS agent_logs_symbol_timestamp ON agent_logs ((context ->> 'symbol'), timestamp DESC);
-- Serves retention and "latest logs".
CREATE INDEX IF NOT EXISTS agent_logs_timestamp ON agent_logs (timestamp);

-- ------------------------------------------------------------------ service_health
CREATE TABLE IF NOT EXISTS service_health (
    health_id  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id   text        NOT NULL,
    service    text        NOT NULL,
    status     text        NOT NULL CHECK (status IN ('healthy', 'degraded', 'unhealthy', 'stopped')),
    details    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    checked_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS service_health_agent_service ON service_health (agent_id, service, checked_at DESC);

-- ------------------------------------------------------------------ position_monitor_status
CREATE TABLE IF NOT EXISTS position_monitor_status (
    position_id     bigint      PRIMARY KEY REFERENCES positions (position_id),
    agent_id        text        NOT NULL,
    symbol          text        NOT NULL,
    last_price      numeric,
    unrealized_pnl  numeric,
    pnl_pct         numeric,
    high_water_mark numeric,
    signal          text,
    signal_strength text,
    recommendation  text,
    reason          text,
    checked_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS position_monitor_status_agent ON position_monitor_status (agent_id, checked_at DESC);

INSERT INTO schema_version (version, description)
VALUES (1, 'core tables: securities, positions, orders, fills, decisions, scan_results, trading_cycles, patterns, agent_logs, service_health, position_monitor_status')
ON CONFLICT (version) DO NOTHING;

-- ================================================================== v2: the paper broker's own account
-- The paper broker is a broker like any other: it keeps its state in tables of its own, never in
-- orders/positions (which are the agent's view). Several processes share one account through these rows;
-- every change happens in a transaction holding the account row lock.
CREATE TABLE IF NOT EXISTS paper_accounts (
    agent_id     text        PRIMARY KEY,
    currency     text        NOT NULL,
    cash         numeric     NOT NULL,
    initial_cash numeric     NOT NULL CHECK (initial_cash > 0),
    order_seq    bigint      NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS paper_orders (
    agent_id        text        NOT NULL REFERENCES paper_accounts (agent_id),
    client_order_id text        NOT NULL,
    broker_order_id text        NOT NULL UNIQUE,
    symbol          text        NOT NULL,
    side            text        NOT NULL CHECK (side IN ('buy', 'sell')),
    order_type      text        NOT NULL CHECK (order_type IN ('market', 'limit')),
    quantity        integer     NOT NULL CHECK (quantity > 0),
    limit_price     numeric     CHECK (limit_price > 0),
    status          text        NOT NULL CHECK (status IN ('submitted', 'partially_filled', 'filled',
                                                          'cancelled', 'rejected', 'expired')),
    filled_quantity integer     NOT NULL DEFAULT 0 CHECK (filled_quantity >= 0),
    avg_fill_price  numeric,
    fees            numeric     NOT NULL DEFAULT 0,
    reason          text,
    submitted_at    timestamptz NOT NULL,
    matched_until   timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (agent_id, client_order_id),
    CHECK (filled_quantity <= quantity)
);
CREATE INDEX IF NOT EXISTS paper_orders_open ON paper_orders (agent_id) WHERE status IN ('submitted', 'partially_filled');

CREATE TABLE IF NOT EXISTS paper_fills (
    fill_id         text        PRIMARY KEY,
    agent_id        text        NOT NULL REFERENCES paper_accounts (agent_id),
    client_order_id text        NOT NULL,
    symbol          text        NOT NULL,
    side            text        NOT NULL CHECK (side IN ('buy', 'sell')),
    quantity        integer     NOT NULL CHECK (quantity > 0),
    price           numeric     NOT NULL CHECK (price > 0),
    fee             numeric     NOT NULL CHECK (fee >= 0),
    filled_at       timestamptz NOT NULL,
    FOREIGN KEY (agent_id, client_order_id) REFERENCES paper_orders (agent_id, client_order_id)
);
CREATE INDEX IF NOT EXISTS paper_fills_order ON paper_fills (agent_id, client_order_id);

CREATE TABLE IF NOT EXISTS paper_positions (
    agent_id  text    NOT NULL REFERENCES paper_accounts (agent_id),
    symbol    text    NOT NULL,
    quantity  integer NOT NULL CHECK (quantity > 0),
    avg_price numeric NOT NULL CHECK (avg_price > 0),
    PRIMARY KEY (agent_id, symbol)
);

-- ================================================================== agent state and AI spend
-- Trading state: ACTIVE, or REDUCING / HALTED with the reason (set by reconciliation, cleared by a person or
-- by a clean reconciliation). The latest row per agent is the state.
CREATE TABLE IF NOT EXISTS agent_state (
    state_id   bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id   text        NOT NULL,
    state      text        NOT NULL CHECK (state IN ('ACTIVE', 'REDUCING', 'HALTED')),
    reason     text        NOT NULL,
    set_by     text        NOT NULL,
    set_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS agent_state_latest ON agent_state (agent_id, set_at DESC, state_id DESC);

-- Every AI call: reserved before the call (under an advisory lock, so concurrent processes share one daily
-- budget), settled with the real usage after it.
CREATE TABLE IF NOT EXISTS ai_usage (
    usage_id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id           text        NOT NULL,
    cycle_id           uuid,
    purpose            text        NOT NULL CHECK (purpose IN ('trade', 'monitor')),
    model              text        NOT NULL,
    status             text        NOT NULL CHECK (status IN ('reserved', 'settled', 'failed')),
    reserved_usd       numeric     NOT NULL CHECK (reserved_usd >= 0),
    cost_usd           numeric     NOT NULL DEFAULT 0 CHECK (cost_usd >= 0),
    input_tokens       bigint      NOT NULL DEFAULT 0,
    output_tokens      bigint      NOT NULL DEFAULT 0,
    cache_write_tokens bigint      NOT NULL DEFAULT 0,
    cache_read_tokens  bigint      NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    settled_at         timestamptz
);
CREATE INDEX IF NOT EXISTS ai_usage_agent_day ON ai_usage (agent_id, purpose, created_at);

INSERT INTO schema_version (version, description)
VALUES (2, 'paper broker account (paper_*), agent_state, ai_usage')
ON CONFLICT (version) DO NOTHING;

-- ================================================================== v3: fees a broker reports per order
-- Some brokers (moomoo's OpenD) report fees per order, not per fill. The part of an order's fees that its fills
-- did not carry is booked onto the position once; fees_booked remembers how much, so a re-sync never books twice.
ALTER TABLE orders ADD COLUMN IF NOT EXISTS fees_booked numeric NOT NULL DEFAULT 0;

INSERT INTO schema_version (version, description)
VALUES (3, 'orders.fees_booked: order-level fees booked onto positions')
ON CONFLICT (version) DO NOTHING;

-- ================================================================== v4: indexes for the hot reads
-- The monitor rewrites one position_monitor_status row per position every pass: indexing checked_at made each
-- of those a non-HOT update (a new index entry per pass). The agent index alone keeps them HOT.
DROP INDEX IF EXISTS position_monitor_status_agent;
CREATE INDEX IF NOT EXISTS position_monitor_status_agent_only ON position_monitor_status (agent_id);
ALTER TABLE position_monitor_status SET (fillfactor = 70);
-- Today's realised P&L and today's entries (every portfolio snapshot) without reading the whole history.
CREATE INDEX IF NOT EXISTS positions_agent_closed ON positions (agent_id, closed_at DESC) WHERE status = 'closed';
CREATE INDEX IF NOT EXISTS orders_agent_created ON orders (agent_id, created_at DESC);

INSERT INTO schema_version (version, description)
VALUES (4, 'indexes for the monitor''s status rows, today''s P&L and today''s entries')
ON CONFLICT (version) DO NOTHING;

-- ================================================================== v5: the bar store and the securities it covers
-- Market data shared by every agent of this installation, keyed by dataset: where the history comes from
-- ('moomoo:HKEX', 'alpaca:iex', 'sim:HKEX:7:240', 'files:HKEX:/path'), so two sources never mix.
-- securities was per agent and never written; it is now per dataset, filled by `./run.sh data sync`.
ALTER TABLE securities DROP COLUMN IF EXISTS agent_id;
ALTER TABLE securities ADD COLUMN IF NOT EXISTS dataset text NOT NULL DEFAULT '';
ALTER TABLE securities ADD COLUMN IF NOT EXISTS listing_status text NOT NULL DEFAULT 'listed';
ALTER TABLE securities ADD COLUMN IF NOT EXISTS source text NOT NULL DEFAULT '';
CREATE UNIQUE INDEX IF NOT EXISTS securities_dataset_symbol ON securities (dataset, symbol);

-- One row per bar. A bar is visible to a reader at `now` only when bar_end <= now (point in time).
CREATE TABLE IF NOT EXISTS bars (
    dataset     text        NOT NULL,
    symbol      text        NOT NULL,
    timeframe   text        NOT NULL CHECK (timeframe IN ('1m', '5m', '15m', '30m', '1h', '1d')),
    bar_start   timestamptz NOT NULL,
    bar_end     timestamptz NOT NULL CHECK (bar_end > bar_start),
    open        numeric     NOT NULL CHECK (open > 0),
    high        numeric     NOT NULL CHECK (high > 0),
    low         numeric     NOT NULL CHECK (low > 0),
    close       numeric     NOT NULL CHECK (close > 0),
    volume      bigint      NOT NULL CHECK (volume >= 0),
    source      text        NOT NULL,
    ingested_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dataset, timeframe, symbol, bar_start)
);

-- The read model of `bars` for whole-universe reads: each symbol's bars as packed float64 / int64 arrays
-- (little-endian), rewritten from `bars` whenever a sync adds to the symbol. Never the truth; always derivable.
CREATE TABLE IF NOT EXISTS bar_series (
    dataset     text        NOT NULL,
    timeframe   text        NOT NULL,
    symbol      text        NOT NULL,
    n           integer     NOT NULL,
    starts      bytea       NOT NULL,
    ends        bytea       NOT NULL,
    open        bytea       NOT NULL,
    high        bytea       NOT NULL,
    low         bytea       NOT NULL,
    close       bytea       NOT NULL,
    volume      bytea       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dataset, timeframe, symbol)
);
ALTER TABLE bar_series ALTER COLUMN starts SET STORAGE EXTERNAL, ALTER COLUMN ends SET STORAGE EXTERNAL,
    ALTER COLUMN open SET STORAGE EXTERNAL, ALTER COLUMN high SET STORAGE EXTERNAL,
    ALTER COLUMN low SET STORAGE EXTERNAL, ALTER COLUMN close SET STORAGE EXTERNAL,
    ALTER COLUMN volume SET STORAGE EXTERNAL;

-- Every sync: what it was asked, what it did, and where it stopped (a killed one stays 'running').
CREATE TABLE IF NOT EXISTS data_syncs (
    sync_id     bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dataset     text        NOT NULL,
    status      text        NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done', 'partial', 'failed')),
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    summary     jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS data_syncs_dataset ON data_syncs (dataset, started_at DESC);

INSERT INTO schema_version (version, description)
VALUES (5, 'bar store: bars, bar_series, data_syncs; securities per dataset')
ON CONFLICT (version) DO NOTHING;

-- ================================================================== v6: recorded model answers (eval re-runs)
-- Every answer the trade model gave, keyed by a hash of the whole request (model, system, tools, messages,
-- max_tokens): a re-run with --reuse-answers asks PostgreSQL instead of the API when the request is the same.
CREATE TABLE IF NOT EXISTS ai_answers (
    request_key  text        PRIMARY KEY,
    model        text        NOT NULL,
    answer       jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

INSERT INTO schema_version (version, description)
VALUES (6, 'ai_answers: recorded model answers keyed by request')
ON CONFLICT (version) DO NOTHING;

-- ================================================================== v7: finding cycles left running
-- Every cycle looks for cycles whose process is gone (runtime/cycle.py mark_interrupted): only the running ones.
CREATE INDEX IF NOT EXISTS trading_cycles_running ON trading_cycles (agent_id) WHERE status = 'running';

INSERT INTO schema_version (version, description)
VALUES (7, 'index of the cycles still running')
ON CONFLICT (version) DO NOTHING;

-- ================================================================== v8: the newest bar of a dataset, by index
-- Every scan and heartbeat asks how fresh the store is (max(bar_end) of a dataset and timeframe).
CREATE INDEX IF NOT EXISTS bars_dataset_end ON bars (dataset, timeframe, bar_end);

INSERT INTO schema_version (version, description)
VALUES (8, 'index of the newest bar per dataset and timeframe')
ON CONFLICT (version) DO NOTHING;

-- ================================================================== v9: protective stop orders at the broker
-- A stop order (order_type 'stop', its trigger in stop_price) protects each open position at the broker while our
-- machine is down (execution/protection.py). Its intent is 'protective_stop': it is an exit the monitor cancels
-- before its own, never "an exit already working". The paper venue holds and triggers them too.
DO $$
DECLARE c record;
BEGIN
    FOR c IN SELECT conname, conrelid::regclass::text AS tbl FROM pg_constraint
             WHERE conrelid IN ('orders'::regclass, 'paper_orders'::regclass) AND contype = 'c'
               AND (pg_get_constraintdef(oid) LIKE '%order_type%' OR pg_get_constraintdef(oid) LIKE '%intent%')
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', c.tbl, c.conname);
    END LOOP;
END $$;
ALTER TABLE orders ADD COLUMN IF NOT EXISTS stop_price numeric CHECK (stop_price > 0);
ALTER TABLE orders ADD CONSTRAINT orders_order_type_v9 CHECK (order_type IN ('market', 'limit', 'stop'));
ALTER TABLE orders ADD CONSTRAINT orders_limit_price_v9 CHECK ((order_type = 'limit') = (limit_price IS NOT NULL));
ALTER TABLE orders ADD CONSTRAINT orders_stop_price_v9 CHECK ((order_type = 'stop') = (stop_price IS NOT NULL));
ALTER TABLE orders ADD CONSTRAINT orders_intent_v9 CHECK (intent IN ('entry', 'exit', 'stop_loss', 'take_profit',
    'trailing_stop', 'signal_exit', 'kill_switch', 'end_of_day', 'reconcile', 'protective_stop'));
CREATE INDEX IF NOT EXISTS orders_working_stops ON orders (agent_id, symbol)
    WHERE intent = 'protective_stop' AND status IN ('pending_submit', 'submitted', 'partially_filled', 'cancel_pending');
ALTER TABLE paper_orders ADD COLUMN IF NOT EXISTS stop_price numeric CHECK (stop_price > 0);
ALTER TABLE paper_orders ADD COLUMN IF NOT EXISTS triggered_at timestamptz;
ALTER TABLE paper_orders ADD CONSTRAINT paper_orders_order_type_v9 CHECK (order_type IN ('market', 'limit', 'stop'));
ALTER TABLE paper_orders ADD CONSTRAINT paper_orders_stop_price_v9 CHECK ((order_type = 'stop') = (stop_price IS NOT NULL));

INSERT INTO schema_version (version, description)
VALUES (9, 'protective stop orders: order_type stop, stop_price, intent protective_stop (orders and paper_orders)')
ON CONFLICT (version) DO NOTHING;
