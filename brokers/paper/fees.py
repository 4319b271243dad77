"""Trading charges for one fill, from a `FeeSchedule` (config `paper.fees`). Exact Decimal arithmetic."""
from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

from core.config_model import FeeSchedule

CENT = Decimal("0.01")
ONE = Decimal("1")


def fill_fees(schedule: FeeSchedule, *, value: Decimal, is_sell: bool) -> Decimal:
    """Total charges on a fill worth `value` (price x quantity), rounded to the cent.

    Commission has a per-fill minimum here (a broker charges it per order; charging it per fill is the
    conservative choice for partial fills).
    """
    commission = max(value * schedule.commission_rate, schedule.commission_min) if schedule.commission_rate else Decimal(0)
    stamp = value * schedule.stamp_duty_rate
    if schedule.stamp_duty_round_up and stamp:
        stamp = stamp.quantize(ONE, rounding=ROUND_CEILING)
    settlement = Decimal(0)
    if schedule.settlement_fee_rate:
        settlement = min(max(value * schedule.settlement_fee_rate, schedule.settlement_fee_min),
                         schedule.settlement_fee_max)
    levies = value * (schedule.trading_fee_rate + schedule.sfc_levy_rate + schedule.afrc_levy_rate)
    sell_only = value * schedule.sell_only_rate if is_sell else Decimal(0)
    total = commission + stamp + settlement + levies + sell_only
    return total.quantize(CENT, rounding=ROUND_HALF_UP)
