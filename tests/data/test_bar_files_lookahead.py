"""No look-ahead from resampling: over random bar resolutions, clock offsets and clock times, no bar that
BarFileSource.bars returns holds a source bar that had not ended by `now` (issue "Evaluation" item 2)."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

from hypothesis import given, settings, strategies as st

from core.calendar import MarketCalendar
from data.bar_files import BarFileSource

CAL = MarketCalendar("HKEX")
DAYS = [date(2026, 11, 23), date(2026, 11, 24)]
TIMEFRAMES = {"1m": 1, "5m": 5, "15m": 15, "30m": 30, "1h": 60}


def write_file(tmp_path, minutes: int, offset: int) -> tuple[BarFileSource, list[tuple[datetime, int]]]:
    """Bars of `minutes` starting `offset` minutes past each clock multiple of `minutes`, inside the sessions only
    (a bar never straddles the lunch break or the close); close = its index + 1, so every bar is recognisable."""
    rows, source = ["timestamp,open,high,low,close,volume"], []
    for day in DAYS:
        for start, end in CAL.session_bounds(day):
            midnight = datetime.combine(day, datetime.min.time(), tzinfo=CAL.tz).astimezone(timezone.utc)
            k = (int((start - midnight).total_seconds() // 60) - offset) // minutes
            t = midnight + timedelta(minutes=k * minutes + offset)
            while t + timedelta(minutes=minutes) <= end:
                if t >= start:
                    i = len(source)
                    source.append((t, minutes))
                    rows.append(f"{t.isoformat()},{i + 1},{i + 1},{i + 1},{i + 1},100")
                t += timedelta(minutes=minutes)
    (tmp_path / "0700.csv").write_text("\n".join(rows) + "\n")
    return BarFileSource(tmp_path, "HKEX", calendar=CAL), source


@settings(max_examples=120, deadline=None)
@given(minutes=st.sampled_from([1, 5, 15, 30, 60]), offset_frac=st.floats(0, 0.999),
       tf=st.sampled_from(list(TIMEFRAMES)), at=st.integers(0, 2 * 24 * 60 - 1))
def test_no_bar_ends_after_now(tmp_path_factory, minutes, offset_frac, tf, at):
    if TIMEFRAMES[tf] % minutes:
        return                                            # finer than the file: not built from it
    offset = int(offset_frac * minutes)
    source_dir = tmp_path_factory.mktemp("bars")
    src, source = write_file(source_dir, minutes, offset)
    now = datetime.combine(DAYS[0], datetime.min.time(), tzinfo=CAL.tz).astimezone(timezone.utc) + timedelta(minutes=at)
    bars = src.bars("0700", tf, now - timedelta(days=3), now)
    for b in bars:
        started, length = source[int(b.close) - 1]
        assert started + timedelta(minutes=length) <= now, (tf, minutes, offset, now, b)
        assert b.start <= started
    if TIMEFRAMES[tf] == minutes:                         # the file's own resolution: every completed bar, as is
        known = [s for s in source if now - timedelta(days=3) <= s[0] and s[0] + timedelta(minutes=s[1]) <= now]
        assert len(bars) == len(known)
