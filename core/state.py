"""The agent's trading state: ACTIVE (all trading), REDUCING (exits only), HALTED (kill switch: exits only)."""
from __future__ import annotations

import enum


class TradingState(str, enum.Enum):
    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"        # daily loss limit reached, or reconciliation found a discrepancy: exits only
    HALTED = "HALTED"            # the kill switch (close_all) ran: exits only until an operator resumes
