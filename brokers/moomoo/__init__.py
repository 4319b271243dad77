"""Moomoo (Futu) through the OpenD gateway: a `BrokerClient` over the moomoo-api SDK, HKEX securities only.

    client.py   MoomooBroker: the port's hooks, order entry by remark, fills (REAL deals / SIMULATE board lots)
    history.py  the bar store's universe and daily K-lines (core.feeds.HistorySource), paged, throttled, quota-checked
    limits.py   OpenD's documented batch sizes, page sizes and frequency limits; the window that keeps them
    stream.py   OpenDQuoteStream: pushed quotes for the monitor, QUOTE subscriptions within OpenD's quota and minute
    book.py     what we know about our orders, merged monotonically from queries and pushes (thread-safe)
    mapping.py  pure translation OpenD rows <-> core values: symbols, the status table, orders, deals, quotes
    sdk.py      the SDK contained: its import side effects, the two contexts, worker threads, timeouts,
                reconnects, error classification, push handlers
"""
from brokers.moomoo.client import MoomooBroker
from brokers.moomoo.mapping import STATUS_MAP, from_moomoo_code, map_status, to_moomoo_code
from brokers.moomoo.sdk import NOT_RUNNING, load_sdk

__all__ = ["MoomooBroker", "NOT_RUNNING", "STATUS_MAP", "from_moomoo_code", "load_sdk", "map_status",
           "to_moomoo_code"]
