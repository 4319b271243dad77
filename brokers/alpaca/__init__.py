"""Alpaca (US equities) behind `BrokerClient`, through the official alpaca-py SDK.

Endpoints: orders and account through `TradingClient` (Alpaca's paper endpoint unless config `alpaca.paper` is
false; ALPACA_BASE_URL overrides it), bars and quotes through `StockHistoricalDataClient` (ALPACA_DATA_URL
overrides https://data.alpaca.markets; the feed is config `alpaca.data_feed`).

    client.py   AlpacaBroker: the port's hooks, order entry and lookups, fills from FILL activities
    history.py  the bar store's universe (assets, snapshots) and daily bars (core.feeds.HistorySource), paged
    mapping.py  pure translation alpaca-py objects <-> core values: the status table, orders, fills, quotes, bars
    sdk.py      the SDK contained: imports, worker threads, timeouts, 429 retries, error translation, endpoints
    stream.py   pushed quotes: alpaca-py's StockDataStream driven on the caller's loop, quotes and trades combined
"""
from brokers.alpaca.client import AlpacaBroker
from brokers.alpaca.mapping import STATUS_MAP, map_status
from brokers.alpaca.sdk import LIVE_URL, PAPER_URL, AlpacaRefused
from brokers.alpaca.stream import STREAM_SYMBOL_LIMIT, AlpacaQuoteStream

__all__ = ["AlpacaBroker", "AlpacaQuoteStream", "AlpacaRefused", "LIVE_URL", "PAPER_URL", "STATUS_MAP",
           "STREAM_SYMBOL_LIMIT", "map_status"]
