"""Every error of ours that crosses a layer, in one tree::

    BrokerError
    ├── BrokerUnavailable   the broker or gateway cannot be reached / timed out  -> retry later, keep state
    ├── OrderRejected       the broker refused this order (reason)              -> tell the model / user
    └── InvalidRequest      we sent something malformed                          -> our bug; fix the caller
    UnknownSymbol           a symbol a market data source does not carry (a KeyError)
"""
from __future__ import annotations


class BrokerError(Exception):
    """Base of every broker error."""


class BrokerUnavailable(BrokerError):
    """The broker or its gateway cannot be reached; retry later. Nothing was decided."""


class OrderRejected(BrokerError):
    """The broker refused the order; `reason` is meant for a human or the model."""

    def __init__(self, reason: str, *, client_order_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.client_order_id = client_order_id


class InvalidRequest(BrokerError):
    """The request itself is malformed (a bug in the caller, not a market condition)."""


class UnknownSymbol(KeyError):
    """A symbol the source does not carry. A KeyError, so `except KeyError` callers keep working."""

    def __str__(self) -> str:  # KeyError would print the repr of the message, quotes and all
        return str(self.args[0]) if self.args else "unknown symbol"


class ConfigError(Exception):
    """A configuration problem a person must fix; the message says where and how."""
