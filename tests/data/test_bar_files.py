from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from data.bar_files import BarFileError, BarFileSource
from core.feeds import MarketDataSource
from core.errors import UnknownSymbol

HKT = ZoneInfo("Asia/Hong_Kong")
ET = ZoneInfo("America/New_York")

DAILY = """timestamp,open,high,low,close,volume
2026-11-17,380.0,384.2,378.6,383.0,1000000
2026-11-18,383.0,385.0,381.0,381.4,900000
2026-11-20,381.4,390.0,381.0,389.8,1500000
2026-11-19,381.4,382.0,379.0,381.4,800000
2026-11-23,389.8,391.0,385.2,386.0,1100000
"""


def minute_rows(day: date, tz=HKT, with_offset: bool = True, start: Decimal = Decimal("10.00")) -> list[tuple]:
    """1m bars 09:30-12:00 and 13:00-16:00 local, price walking up a cent a minute (one tick: US, or HKEX under 10)."""
    rows, price = [], start
    for a, b in (((9, 30), (12, 0)), ((13, 0), (16, 0))):
        t = datetime(day.year, day.month, day.day, *a, tzinfo=tz)
        stop = datetime(day.year, day.month, day.day, *b, tzinfo=tz)
        while t < stop:
            stamp = t.isoformat() if with_offset else t.replace(tzinfo=None).isoformat(sep=" ")
            rows.append((stamp, price, price + Decimal("0.02"), price - Decimal("0.01"), price + Decimal("0.01"), 1000))
            price += Decimal("0.01")
            t += timedelta(minutes=1)
    return rows


def write_csv(path, rows) -> None:
    path.write_text("timestamp,open,high,low,close,volume\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))


@pytest.fixture
def hk_dir(tmp_path):
    (tmp_path / "0700.csv").write_text(DAILY)
    (tmp_path / "0005.csv").write_text("\n".join(l for l in DAILY.splitlines() if not l.startswith("2026-11-20")))
    write_csv(tmp_path / "9999.csv", minute_rows(date(2026, 11, 24), start=Decimal("5.00")))
    (tmp_path / "instruments.csv").write_text("symbol,name,lot_size,currency\n0700,Tencent,100,HKD\n0005,HSBC,400,\n")
    (tmp_path / "notes.txt").write_text("ignored")
    return tmp_path


def test_daily_files_serve_bars_quotes_and_frames(hk_dir):
    src = BarFileSource(hk_dir, "HKEX")
    assert isinstance(src, MarketDataSource)
    assert [i.symbol for i in src.instruments()] == ["0005", "0700", "9999"]
    assert src.instrument("0005").lot_size == 400 and src.instrument("0005").currency == "HKD"
    assert src.instrument("9999").lot_size == 100 and src.instrument("9999").name == "9999"

    end = datetime(2026, 11, 20, 15, 0, tzinfo=HKT)            # the 20th has not closed yet
    bars = src.bars("0700", "1d", end - timedelta(days=10), end)
    assert [b.start.astimezone(HKT).date() for b in bars] == [date(2026, 11, 17), date(2026, 11, 18), date(2026, 11, 19)]
    assert bars[0].start == datetime(2026, 11, 17, 9, 30, tzinfo=HKT)
    assert bars[0].high == Decimal("384.2") and bars[0].volume == 1_000_000
    q = src.quote("0700", datetime(2026, 11, 20, 9, 30, 30, tzinfo=HKT))   # in the first minute: yesterday's close
    assert q.last == Decimal("381.4") and q.timestamp == datetime(2026, 11, 19, 16, 0, tzinfo=HKT)
    assert q.bid == q.ask == q.last            # a print is one price: its quote is that price on both sides
    q = src.quote("0700", end)                                    # after it: the day's opening print
    assert q.last == Decimal("381.4") and q.timestamp == datetime(2026, 11, 20, 9, 31, tzinfo=HKT)
    assert src.quote("0700", datetime(2026, 11, 20, 16, 0, tzinfo=HKT)).last == Decimal("389.8")


def test_a_daily_file_trades_only_at_its_opening_and_closing_prints(hk_dir):
    src = BarFileSource(hk_dir, "HKEX")
    day_start, day_end = datetime(2026, 11, 23, 9, 0, tzinfo=HKT), datetime(2026, 11, 23, 17, 0, tzinfo=HKT)
    prints = src.bars("0700", "1m", day_start, day_end)
    assert [(b.start.astimezone(HKT).time(), b.open, b.high, b.low, b.close, b.volume) for b in prints] == [
        (time(9, 30), Decimal("389.8"), Decimal("389.8"), Decimal("389.8"), Decimal("389.8"), 750_000),
        (time(15, 59), Decimal("386.0"), Decimal("386.0"), Decimal("386.0"), Decimal("386.0"), 550_000)]
    # the opening print's volume is half the previous session's (the day's total is unknown at its open)
    first_open = src.bars("0700", "1m", datetime(2026, 11, 17, 9, 0, tzinfo=HKT),
                          datetime(2026, 11, 17, 9, 31, tzinfo=HKT))
    assert [b.volume for b in first_open] == [0]                  # the file's first day: nothing known before it
    assert src.bars("0700", "1m", day_start, datetime(2026, 11, 23, 15, 59, 30, tzinfo=HKT))[-1].start == \
        datetime(2026, 11, 23, 9, 30, tzinfo=HKT)                 # the closing print is not done before 16:00
    assert [b.close for b in src.bars("0700", "1d", day_start, day_end)] == [Decimal("386.0")]
    assert src.bars("0700", "1d", day_start, day_end)[0].high == Decimal("391.0")    # the file's own daily bar
    assert src.daily_only is False                                # 9999 holds minute bars
    (hk_dir / "9999.csv").unlink()
    assert BarFileSource(hk_dir, "HKEX").daily_only is True

    frames = src.daily_frame(["0700", "0005"], datetime(2026, 11, 24, 8, 0, tzinfo=HKT), 4)
    close = frames["close"]
    assert list(close.index.date) == [date(2026, 11, 18), date(2026, 11, 19), date(2026, 11, 20), date(2026, 11, 23)]
    assert close.loc["2026-11-20", "0700"] == 389.8
    assert np.isnan(close.loc["2026-11-20", "0005"])           # no bar that day: NaN, not a made-up value
    assert frames["volume"].loc["2026-11-23", "0700"] == 1_100_000


def test_intraday_file_aggregates_and_never_leaks(hk_dir):
    src = BarFileSource(hk_dir, "HKEX")
    day = datetime(2026, 11, 24, tzinfo=HKT)
    end = datetime(2026, 11, 24, 10, 47, 30, tzinfo=HKT)
    minutes = src.bars("9999", "1m", day, end)
    assert len(minutes) == 77 and minutes[-1].start == datetime(2026, 11, 24, 10, 46, tzinfo=HKT)
    fives = src.bars("9999", "5m", day, end)
    assert len(fives) == 15 and fives[-1].start == datetime(2026, 11, 24, 10, 40, tzinfo=HKT)
    assert fives[0].open == Decimal("5.00") and fives[0].close == Decimal("5.05") and fives[0].volume == 5000
    hours = src.bars("9999", "1h", day, datetime(2026, 11, 24, 12, 0, tzinfo=HKT))
    assert [h.start.astimezone(HKT).strftime("%H:%M") for h in hours] == ["09:30", "10:30", "11:30"]
    assert hours[-1].volume == 30_000                          # 11:30-12:00 is a short bar, complete at noon
    assert src.bars("9999", "1d", day, datetime(2026, 11, 24, 15, 59, tzinfo=HKT)) == []
    (daily,) = src.bars("9999", "1d", day, datetime(2026, 11, 24, 16, 0, tzinfo=HKT))
    assert (daily.open, daily.close, daily.volume) == (Decimal("5.00"), Decimal("8.30"), 330_000)
    assert daily.high == Decimal("8.31") and daily.low == Decimal("4.99")

    lunch = src.quote("9999", datetime(2026, 11, 24, 12, 30, tzinfo=HKT))
    assert lunch.last == minutes[0].close + Decimal("0.01") * 149
    assert lunch.volume == 150_000 and lunch.timestamp == datetime(2026, 11, 24, 12, 0, tzinfo=HKT)
    frame = src.daily_frame(["9999", "0700"], datetime(2026, 11, 24, 15, 0, tzinfo=HKT), 3)
    assert frame["close"].index[-1].date() == date(2026, 11, 23)
    assert np.isnan(frame["close"]["9999"]).all()


def test_a_quote_stays_inside_the_bar_it_comes_from(tmp_path):
    """One tick either side of the close, but never past the bar's low or high: a buy at the ask and a sell at the
    bid are prices that bar traded."""
    day = date(2026, 11, 24)
    write_csv(tmp_path / "0001.csv", [
        (datetime(2026, 11, 24, 9, 30, tzinfo=HKT).isoformat(), "5.00", "5.05", "4.95", "5.02", 1000),  # inside
        (datetime(2026, 11, 24, 9, 31, tzinfo=HKT).isoformat(), "5.02", "5.04", "5.00", "5.04", 1000),  # at its high
        (datetime(2026, 11, 24, 9, 32, tzinfo=HKT).isoformat(), "5.04", "5.06", "5.03", "5.03", 1000),  # at its low
        (datetime(2026, 11, 24, 9, 33, tzinfo=HKT).isoformat(), "5.03", "5.03", "5.03", "5.03", 1000),  # one price
    ])
    src = BarFileSource(tmp_path, "HKEX")
    touch = [(q.bid, q.last, q.ask) for q in (src.quote("0001", datetime.combine(day, time(9, m), HKT))
                                              for m in (31, 32, 33, 34))]
    assert touch == [(Decimal("5.01"), Decimal("5.02"), Decimal("5.03")),
                     (Decimal("5.03"), Decimal("5.04"), Decimal("5.04")),
                     (Decimal("5.03"), Decimal("5.03"), Decimal("5.04")),
                     (Decimal("5.03"), Decimal("5.03"), Decimal("5.03"))]


def test_parquet_with_local_times_matches_csv_with_offsets(tmp_path):
    rows = minute_rows(date(2026, 11, 24), tz=ET)[:390]
    write_csv(tmp_path / "AAA.csv", rows)
    naive = minute_rows(date(2026, 11, 24), tz=ET, with_offset=False)[:390]
    frame = pd.DataFrame({"Timestamp": pd.to_datetime([r[0] for r in naive]),
                          "open": [float(r[1]) for r in naive], "high": [float(r[2]) for r in naive],
                          "low": [float(r[3]) for r in naive], "close": [float(r[4]) for r in naive],
                          "volume": [r[5] for r in naive]})
    frame.to_parquet(tmp_path / "BBB.parquet")
    src = BarFileSource(tmp_path, "NYSE")
    assert src.instrument("BBB").lot_size == 1 and src.instrument("BBB").currency == "USD"
    span = (datetime(2026, 11, 24, tzinfo=ET), datetime(2026, 11, 25, tzinfo=ET))
    a, b = src.bars("AAA", "15m", *span), src.bars("BBB", "15m", *span)
    assert [(x.start, x.open, x.high, x.low, x.close, x.volume) for x in a] == \
           [(x.start, x.open, x.high, x.low, x.close, x.volume) for x in b]
    assert a[0].start == datetime(2026, 11, 24, 14, 30, tzinfo=timezone.utc)


def test_naive_csv_time_is_exchange_local(tmp_path):
    write_csv(tmp_path / "AAA.csv", [("2026-11-24 09:30", 10, 10, 10, 10, 5), ("2026-11-24 09:31", 10, 11, 10, 11, 5)])
    src = BarFileSource(tmp_path, "US")
    (bar, _) = src.bars("AAA", "1m", datetime(2026, 11, 24, tzinfo=timezone.utc), datetime(2026, 11, 25, tzinfo=timezone.utc))
    assert bar.start == datetime(2026, 11, 24, 14, 30, tzinfo=timezone.utc)


@pytest.mark.parametrize("body, message", [
    ("timestamp,open,high,low,close,volume\n2026-11-17,1,2,0.5,1.5,10\n2026-11-18,1,2,abc,1.5,10\n",
     r"line 3, column 'low': 'abc' is not a number"),
    ("timestamp,open,high,low,close,volume\n2026-11-17,1,2,0.5,1.5,10\nyesterday,1,2,0.5,1.5,10\n",
     r"line 3, column 'timestamp': 'yesterday' is not an ISO-8601"),
    ("timestamp,open,high,close,volume\n2026-11-17,1,2,1.5,10\n", r"missing column\(s\) low"),
    ("timestamp,open,high,low,close,volume\n2026-11-17,1,2,0.5,2.5,10\n", r"line 2: inconsistent bar"),
    ("timestamp,open,high,low,close,volume\n2026-11-17,1,2,0.5,1.5,10\n2026-11-17,1,2,0.5,1.5,10\n",
     r"line 3, column 'timestamp'.*line 2"),
    ("timestamp,open,high,low,close,volume\n2026-11-17,1,2,0.5,1.5,-4\n", r"line 2, column 'volume'"),
    ("timestamp,open,high,low,close,volume\n2026-11-17,1,2,0.5,1.5,\n", r"line 2, column 'volume': empty"),
    ("timestamp,open,high,low,close,volume\n2026-11-17 09:30:30,1,2,0.5,1.5,10\n2026-11-17 09:31:30,1,2,0.5,1.5,10\n",
     r"line 2, column 'timestamp'.*not on a whole minute"),
    ("", r"empty"),
])
def test_malformed_files_name_file_line_and_column(tmp_path, body, message):
    (tmp_path / "BAD.csv").write_text(body)
    src = BarFileSource(tmp_path, "HKEX")
    with pytest.raises(BarFileError, match=message) as err:
        src.validate()
    assert "BAD.csv" in str(err.value)


def test_other_mistakes_are_explained(tmp_path):
    with pytest.raises(BarFileError, match="no SYMBOL.csv"):
        BarFileSource(tmp_path, "HKEX")
    (tmp_path / "0700.csv").write_text(DAILY)
    (tmp_path / "instruments.csv").write_text("symbol,lot_size\n0700,ten\n")
    with pytest.raises(BarFileError, match=r"instruments.csv line 2, column 'lot_size'"):
        BarFileSource(tmp_path, "HKEX")
    (tmp_path / "instruments.csv").unlink()
    src = BarFileSource(tmp_path, "HKEX")
    with pytest.raises(UnknownSymbol, match="0701"):
        src.quote("0701", datetime(2026, 11, 24, tzinfo=HKT))
    five = src.bars("0700", "5m", datetime(2026, 11, 17, tzinfo=HKT), datetime(2026, 11, 18, tzinfo=HKT))
    assert [b.start.astimezone(HKT).time() for b in five] == [time(9, 30), time(15, 55)]    # the two prints
    with pytest.raises(ValueError, match="no bar of 0700 has completed"):
        src.quote("0700", datetime(2026, 11, 17, 9, 30, 30, tzinfo=HKT))


OFF_GRID = """timestamp,open,high,low,close,volume
2026-11-17,380.3,384.3,378.5,383.05,1000000
2026-11-18,383.0,385.0,381.0,381.4,900000
"""


def test_prices_off_the_tick_grid_are_snapped_and_counted_on_the_first_read(tmp_path, caplog):
    """HKEX 200-500 trades in 0.2 steps: open and close go to the nearest tick (a tie up), high up, low down."""
    (tmp_path / "0700.csv").write_text(OFF_GRID)
    src = BarFileSource(tmp_path, "HKEX")
    end = datetime(2026, 11, 19, 8, 0, tzinfo=HKT)
    with caplog.at_level("WARNING", logger="data.bar_file_reader"):
        first = src.bars("0700", "1d", end - timedelta(days=5), end)[0]
        src.bars("0700", "1d", end - timedelta(days=5), end)
        src.quote("0700", end)
    assert (first.open, first.high, first.low, first.close) == (Decimal("380.4"), Decimal("384.4"),
                                                                Decimal("378.4"), Decimal("383.0"))
    snapped = src.snapped("0700")
    assert (snapped.prices, snapped.bars) == (4, 1)
    assert snapped.examples == ("line 2 open 380.3 -> 380.4", "line 2 high 384.3 -> 384.4",
                                "line 2 low 378.5 -> 378.4")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "0700.csv: 4 prices in 1 bars were off the tick grid and were snapped" in \
        warnings[0]
    prints = src.bars("0700", "1m", datetime(2026, 11, 17, 9, 0, tzinfo=HKT), end)
    assert [p.close for p in prints][:2] == [Decimal("380.4"), Decimal("383.0")]    # the prints trade on the grid


@pytest.mark.parametrize("scheme,exchange,tz", [("hkex", "HKEX", HKT), ("us", "NYSE", ET)])
def test_snapping_agrees_with_the_tick_table_in_every_band(tmp_path, scheme, exchange, tz):
    """Random prices across every band of the scheme, read from a file, equal core.ticks' rounding of each."""
    from core.ticks import is_on_tick, round_to_tick
    rng = np.random.default_rng(11)
    n = 400
    mid = np.exp(rng.uniform(np.log(0.02), np.log(6000), n))
    spread = rng.uniform(0, 0.05, (n, 4))
    o, c = mid * (1 + spread[:, 0] - 0.025), mid * (1 + spread[:, 1] - 0.025)
    h, lo = np.maximum(o, c) * (1 + spread[:, 2]), np.minimum(o, c) * (1 - spread[:, 3])
    days = pd.bdate_range("2025-01-02", periods=n)
    rows = [(d.strftime("%Y-%m-%d"), *(f"{x:.5f}" for x in (o[i], h[i], lo[i], c[i])), 1000)
            for i, d in enumerate(days)]
    write_csv(tmp_path / ("0001.csv" if scheme == "hkex" else "ABC.csv"), rows)
    src = BarFileSource(tmp_path, exchange)
    symbol = src.instruments()[0].symbol
    bars = src.bars(symbol, "1d", datetime(2025, 1, 1, tzinfo=tz), datetime(2027, 1, 1, tzinfo=tz))
    raw = {r[0]: [Decimal(x) for x in r[1:5]] for r in rows}
    assert len(bars) > 300
    for b in bars:
        ro, rh, rl, rc = raw[src.calendar.local_date(b.start).isoformat()]
        assert (b.open, b.high, b.low, b.close) == (round_to_tick(ro, scheme, "nearest"),
                                                    round_to_tick(rh, scheme, "up"),
                                                    round_to_tick(rl, scheme, "down"),
                                                    round_to_tick(rc, scheme, "nearest")), b
        assert b.low <= min(b.open, b.close) and max(b.open, b.close) <= b.high
        assert all(is_on_tick(p, scheme) for p in (b.open, b.high, b.low, b.close))
    assert src.snapped(symbol).prices > 0


def test_a_price_below_the_smallest_tick_is_refused(tmp_path):
    write_csv(tmp_path / "ABC.csv", [("2026-11-17", "0.0001", "0.0002", "0.00004", "0.0001", 100)])
    with pytest.raises(BarFileError, match=r"ABC.csv line 2, column 'low': price 4e-05 is below the smallest tick"):
        BarFileSource(tmp_path, "NYSE").validate()


async def test_import_snaps_and_reports_what_it_moved(pool, tmp_path):
    from core.calendar import MarketCalendar
    from data.importer import import_bar_files
    from data.store import BarStore
    (tmp_path / "0700.csv").write_text(OFF_GRID)
    calendar = MarketCalendar("HKEX")
    store = BarStore(pool, dataset=f"files:test:{tmp_path}", exchange="HKEX", calendar=calendar)
    report = await import_bar_files(tmp_path, store, now=datetime(2026, 11, 20, 8, 0, tzinfo=HKT))
    text = report.render("HKEX")
    assert ("warning: 0700: 4 prices in 1 bars were off the tick grid and were snapped (open and close to the "
            "nearest tick, high up, low down), e.g. line 2 open 380.3 -> 380.4") in text, text
    stored = await store.bars("0700", "1d", datetime(2026, 11, 17, tzinfo=HKT), datetime(2026, 11, 20, tzinfo=HKT))
    assert [(b.open, b.high, b.low, b.close) for b in stored][0] == (Decimal("380.4"), Decimal("384.4"),
                                                                     Decimal("378.4"), Decimal("383.0"))
