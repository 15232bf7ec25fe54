"""The default godmode scenarios, generated from a seed (nothing is downloaded).

Three scenarios of 30 questions each over synthetic but realistic market data:
  daily_ohlcv  three years of daily OHLCV for 30 tickers, with splits, halts (volume 0), missing rows
               and exchange holidays; splits listed in splits.parquet;
  tick_day     one trading day of trades and quotes for 8 tickers (nanosecond timestamps);
  portfolio    positions of 5 accounts, 22 days of closes and corporate actions (dividends, splits).

Every question has a reference query: a Python/pandas program whose printed output is the answer. The
generator runs it in-process to write the answer; the same program, sent through the sandbox as a bash
command, is what the oracle test replays (tests/test_godmode.py). Questions state their conventions
(percent or ratio, rounding, adjusted or raw, trading or calendar days): that is where competent
models disagree.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

GENERATOR_VERSION = "2"  # 2: no value drawn twice within a question family (90 distinct questions)
DEFAULT_SEED = 20260101
DATA_MOUNT = "/data"  # where the scenario's files are, inside the sandbox and in reference programs


def reference_command(program: str) -> str:
    """The bash command that runs a reference program in the sandbox."""
    return f"python3 - <<'EOF'\nimport pandas as pd, numpy as np\n{program.strip()}\nEOF"


def run_reference(program: str, data_dir: Path) -> str:
    """What the reference program prints, run here with DATA_MOUNT pointing at `data_dir`."""
    out = io.StringIO()
    source = program.replace(f"'{DATA_MOUNT}/", f"'{data_dir}/")
    with contextlib.redirect_stdout(out):
        exec(compile(source, "<reference>", "exec"), {"pd": pd, "np": np})
    return out.getvalue().strip()


def _tickers(rng: np.random.Generator, n: int) -> list[str]:
    letters = np.array(list("ABCDEFGHIJKLMNOPRSTUVWXZ"))
    seen: list[str] = []
    while len(seen) < n:
        name = "".join(rng.choice(letters, size=int(rng.integers(3, 5))))
        if name not in seen:
            seen.append(name)
    return sorted(seen)


class _Draws:
    """Random picks without replacement within a question family: two questions of one family never
    name the same ticker, day or account, so every generated question is distinct by construction."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.used: set[tuple[str, object]] = set()

    def __call__(self, seq, family: str):
        left = [v for v in seq if (family, v) not in self.used]
        value = left[int(self.rng.integers(len(left)))]
        self.used.add((family, value))
        return value


def _q(qid, question, program, kind, tolerance, convention, unit="", ordered=False) -> dict:
    return {
        "id": qid, "question": question, "kind": kind, "tolerance": tolerance, "convention": convention,
        "unit": unit, "ordered": ordered, "reference": reference_command(program), "_program": program,
    }  # fmt: skip


# --- scenario 1: daily OHLCV ------------------------------------------------------------------------


def _daily(rng: np.random.Generator, out: Path) -> list[dict]:
    tickers = _tickers(rng, 30)
    days = pd.bdate_range("2021-01-04", "2023-12-29")
    holidays = rng.choice(len(days), size=27, replace=False)
    days = days.delete(np.sort(holidays))
    rows, splits = [], []
    split_tickers = set(rng.choice(tickers, size=6, replace=False).tolist())
    for t in tickers:
        price = float(rng.uniform(20, 400))
        drift, vol = rng.normal(0.0003, 0.0004), rng.uniform(0.01, 0.03)
        base_volume = int(rng.integers(200_000, 5_000_000))
        split_day = int(rng.integers(100, len(days) - 100)) if t in split_tickers else -1
        ratio = int(rng.choice([2, 3, 4])) if split_day >= 0 else 1
        if split_day >= 0:
            splits.append({"ticker": t, "date": days[split_day].date(), "ratio": float(ratio)})
        missing = set(rng.choice(len(days), size=int(rng.integers(0, 8)), replace=False).tolist())
        halts = set(rng.choice(len(days), size=int(rng.integers(0, 5)), replace=False).tolist())
        for i, day in enumerate(days):
            if i == split_day:
                price /= ratio
            prev = price
            if i in halts:
                rows.append((day.date(), t, prev, prev, prev, prev, 0))
                continue
            price = prev * float(np.exp(rng.normal(drift, vol)))
            if i in missing:
                continue
            hi = max(prev, price) * (1 + abs(rng.normal(0, vol / 3)))
            lo = min(prev, price) * (1 - abs(rng.normal(0, vol / 3)))
            volume = int(base_volume * rng.lognormal(0, 0.4)) * (ratio if 0 <= split_day <= i else 1)
            rows.append((day.date(), t, round(prev, 4), round(hi, 4), round(lo, 4), round(price, 4), volume))
    prices = pd.DataFrame(rows, columns=["date", "ticker", "open", "high", "low", "close", "volume"])
    prices["date"] = pd.to_datetime(prices["date"])
    prices.to_parquet(out / "prices.parquet", index=False)
    sp = pd.DataFrame(splits).sort_values("ticker")
    sp["date"] = pd.to_datetime(sp["date"])
    sp.to_parquet(out / "splits.parquet", index=False)
    (out / "description.md").write_text(
        "Daily OHLCV bars of 30 US-style tickers, 2021-01-04 to 2023-12-29.\n"
        f"- {DATA_MOUNT}/prices.parquet: date, ticker, open, high, low, close, volume. Prices are RAW (not "
        "split-adjusted). A day with volume 0 is a trading halt (OHLC repeat the previous close). Some "
        "ticker-days are simply missing, and some weekdays are exchange holidays (no rows at all).\n"
        f"- {DATA_MOUNT}/splits.parquet: ticker, date, ratio. On `date` the price is divided by `ratio` "
        "(a 3.0 ratio is a 3-for-1 split). Split-adjusted prices divide every close BEFORE the split date "
        "by the ratio.\n"
        "A trading day of a ticker is a row with volume > 0.\n"
    )
    split_list = sp["ticker"].tolist()
    plain = [t for t in tickers if t not in split_list]
    adj = (
        "p = pd.read_parquet('/data/prices.parquet'); s = pd.read_parquet('/data/splits.parquet')\n"
        "p['adj'] = p['close']\n"
        "for _, r in s.iterrows():\n"
        "    m = (p['ticker'] == r['ticker']) & (p['date'] < r['date'])\n"
        "    p.loc[m, 'adj'] = p.loc[m, 'close'] / r['ratio']\n"
    )
    qs: list[dict] = []
    pick = _Draws(rng)
    for k in range(3):
        t, d = pick(tickers, "daily-close"), pick(prices["date"].unique(), "daily-close")
        d = pd.Timestamp(d).date().isoformat()
        qs.append(_q(f"daily-close-{k}", f"What was the raw close of {t} on {d}?",
                     f"p = pd.read_parquet('/data/prices.parquet')\nprint(round(float(p[(p.ticker == '{t}') & (p.date == '{d}')].close.iloc[0]), 2))",
                     "number", 0.005, "Raw (unadjusted) close, in dollars, rounded to 2 decimals."))  # fmt: skip
    for k in range(3):
        t = split_list[k]
        qs.append(_q(f"daily-adjret-pct-{k}", f"What was the split-adjusted total price return of {t} from its first to its last close in the data?",
                     adj + f"x = p[p.ticker == '{t}'].sort_values('date')\nprint(round(100 * (x.adj.iloc[-1] / x.adj.iloc[0] - 1), 2))",
                     "number", 0.01, "Percent (12.34 means 12.34%), split-adjusted closes, no dividends, rounded to 2 decimals.", unit="percent"))  # fmt: skip
    for k in range(3):
        t = split_list[3 + k]
        y = 2021 + k
        qs.append(_q(f"daily-adjret-ratio-{k}", f"What was the split-adjusted price return of {t} over {y}, from the last close of {y - 1} (or its first close of {y} if it has none before) to its last close of {y}?",
                     adj + f"x = p[p.ticker == '{t}'].sort_values('date')\nbefore = x[x.date.dt.year < {y}]\nstart = before.adj.iloc[-1] if len(before) else x[x.date.dt.year == {y}].adj.iloc[0]\nend = x[x.date.dt.year == {y}].adj.iloc[-1]\nprint(round(end / start - 1, 4))",
                     "number", 0.0001, "A ratio (0.1234 means 12.34%), split-adjusted closes, rounded to 4 decimals.", unit="ratio"))  # fmt: skip
    for k in range(3):
        t, y = pick(tickers, "daily-tradingdays"), 2021 + k
        qs.append(_q(f"daily-tradingdays-{k}", f"How many trading days does {t} have in {y}?",
                     f"p = pd.read_parquet('/data/prices.parquet')\nprint(int(((p.ticker == '{t}') & (p.date.dt.year == {y}) & (p.volume > 0)).sum()))",
                     "number", 0, "A count of rows with volume > 0 (halts and missing days excluded); an integer."))  # fmt: skip
    for k in range(3):
        t, m = pick(tickers, "daily-avgvol"), f"2022-{int(rng.integers(1, 13)):02d}"
        qs.append(_q(f"daily-avgvol-{k}", f"What was the average daily volume of {t} in {m}?",
                     f"p = pd.read_parquet('/data/prices.parquet')\nx = p[(p.ticker == '{t}') & (p.date.dt.strftime('%Y-%m') == '{m}') & (p.volume > 0)]\nprint(int(round(x.volume.mean())))",
                     "number", 0.5, "Mean over the ticker's trading days of that month (halts excluded), raw share counts, rounded to an integer."))  # fmt: skip
    for k in range(3):
        t, y = pick(plain, "daily-vol"), 2021 + k
        qs.append(_q(f"daily-vol-{k}", f"What was the annualized volatility of {t}'s daily log returns in {y}?",
                     f"p = pd.read_parquet('/data/prices.parquet')\nx = p[(p.ticker == '{t}') & (p.date.dt.year == {y}) & (p.volume > 0)].sort_values('date')\nr = np.log(x.close).diff().dropna()\nprint(round(100 * r.std(ddof=1) * np.sqrt(252), 2))",
                     "number", 0.01, "Percent; log returns between consecutive trading days of that year (rows with volume > 0), sample standard deviation (ddof=1) times sqrt(252), rounded to 2 decimals.", unit="percent"))  # fmt: skip
    for k in range(3):
        t = split_list[k + 3] if k < 2 else pick(plain, "daily-mdd")
        qs.append(_q(f"daily-mdd-{k}", f"What was the maximum drawdown of {t}'s split-adjusted close over the whole data?",
                     adj + f"x = p[p.ticker == '{t}'].sort_values('date').adj\nprint(round(100 * float((1 - x / x.cummax()).max()), 2))",
                     "number", 0.01, "Percent, as a positive number (25.5 means a 25.5% fall from the running peak), split-adjusted closes, rounded to 2 decimals.", unit="percent"))  # fmt: skip
    for k in range(3):
        t = pick(tickers, "daily-missing")
        qs.append(_q(f"daily-missing-{k}", f"On how many exchange trading days does {t} have no row at all?",
                     f"p = pd.read_parquet('/data/prices.parquet')\nprint(int(p.date.nunique() - p[p.ticker == '{t}'].date.nunique()))",
                     "number", 0, "Exchange trading days are the dates on which any ticker has a row; an integer."))  # fmt: skip
    for k in range(3):
        y = 2021 + k
        qs.append(_q(f"daily-best-{k}", f"Which ticker had the highest split-adjusted return in {y}, from its first to its last close of that year?",
                     adj + f"x = p[p.date.dt.year == {y}].sort_values('date').groupby('ticker').adj\nprint((x.last() / x.first()).idxmax())",
                     "text", 0, "The ticker symbol only."))  # fmt: skip
    qs.append(_q("daily-splits-0", "Which tickers had a stock split?",
                 "s = pd.read_parquet('/data/splits.parquet')\nprint(', '.join(sorted(s.ticker)))",
                 "list", 0, "Ticker symbols separated by commas, in any order."))  # fmt: skip
    qs.append(_q("daily-halts-0", "Which tickers had at least 3 halted days (volume 0)?",
                 "p = pd.read_parquet('/data/prices.parquet')\nn = p[p.volume == 0].groupby('ticker').size()\nprint(', '.join(sorted(n[n >= 3].index)) or 'none')",
                 "list", 0, "Ticker symbols separated by commas, in any order ('none' if there are none)."))  # fmt: skip
    t = pick(tickers, "daily-span")
    qs.append(_q("daily-span-0", f"How many calendar days lie between {t}'s first and last trading day in the data?",
                 f"p = pd.read_parquet('/data/prices.parquet')\nx = p[(p.ticker == '{t}') & (p.volume > 0)].date\nprint((x.max() - x.min()).days)",
                 "number", 0, "Calendar days (last date minus first date), an integer."))  # fmt: skip
    return qs


# --- scenario 2: one day of trades and quotes ----------------------------------------------------


def _tick(rng: np.random.Generator, out: Path) -> list[dict]:
    tickers = _tickers(rng, 8)
    day = pd.Timestamp("2024-03-14 09:30:00")
    start_ns, end_ns = day.value, (day + pd.Timedelta(hours=6, minutes=30)).value
    trades, quotes = [], []
    for t in tickers:
        mid = float(rng.uniform(10, 300))
        tick = 0.01
        n_q = int(rng.integers(2500, 5000))
        q_ts = np.sort(rng.integers(start_ns, end_ns, size=n_q))
        for ts in q_ts:
            mid *= float(np.exp(rng.normal(0, 0.0004)))
            half = tick * int(rng.integers(1, 6))
            bid, ask = round(mid - half, 2), round(mid + half, 2)
            quotes.append((ts, t, bid, ask, int(rng.integers(1, 20)) * 100, int(rng.integers(1, 20)) * 100))
        n_t = int(rng.integers(1500, 3500))
        t_ts = np.sort(rng.integers(q_ts[0] + 1, end_ns, size=n_t))
        q_idx = np.searchsorted(q_ts, t_ts, side="right") - 1
        qt = [q for q in quotes if q[1] == t]
        for ts, qi in zip(t_ts, q_idx, strict=True):
            bid, ask = qt[qi][2], qt[qi][3]
            where = rng.random()
            price = ask if where < 0.4 else bid if where < 0.8 else round((bid + ask) / 2, 2)
            size = int(rng.choice([100, 100, 200, 300, 500, 1000])) if rng.random() > 0.02 else int(rng.integers(5, 99))
            trades.append((ts, t, price, size))
    tr = pd.DataFrame(trades, columns=["ts", "ticker", "price", "size"])
    tr["ts"] = pd.to_datetime(tr["ts"])
    tr.sort_values(["ts", "ticker"], kind="stable").to_parquet(out / "trades.parquet", index=False)
    qu = pd.DataFrame(quotes, columns=["ts", "ticker", "bid", "ask", "bid_size", "ask_size"])
    qu["ts"] = pd.to_datetime(qu["ts"])
    qu.sort_values(["ts", "ticker"], kind="stable").to_parquet(out / "quotes.parquet", index=False)
    (out / "description.md").write_text(
        "One trading day (2024-03-14, 09:30 to 16:00 exchange time, timestamps in nanoseconds, no time zone) "
        "of 8 tickers.\n"
        f"- {DATA_MOUNT}/trades.parquet: ts, ticker, price, size (shares). Sizes under 100 are odd lots.\n"
        f"- {DATA_MOUNT}/quotes.parquet: ts, ticker, bid, ask, bid_size, ask_size (top of book). A quote "
        "holds until the ticker's next quote.\n"
    )
    pick = _Draws(rng)
    load_t = "t = pd.read_parquet('/data/trades.parquet')\n"
    load_q = "q = pd.read_parquet('/data/quotes.parquet')\n"
    qs: list[dict] = []
    for k in range(3):
        t = pick(tickers, "tick-vwap")
        qs.append(_q(f"tick-vwap-{k}", f"What was the volume-weighted average trade price of {t} over the day?",
                     load_t + f"x = t[t.ticker == '{t}']\nprint(round(float((x.price * x['size']).sum() / x['size'].sum()), 4))",
                     "number", 0.0001, "All trades including odd lots, dollars, rounded to 4 decimals."))  # fmt: skip
    for k in range(3):
        t = pick(tickers, "tick-oddlot")
        qs.append(_q(f"tick-oddlot-{k}", f"What share of {t}'s trades were odd lots?",
                     load_t + f"x = t[t.ticker == '{t}']\nprint(round(100 * float((x['size'] < 100).mean()), 2))",
                     "number", 0.01, "Percent of the number of trades (not volume), rounded to 2 decimals.", unit="percent"))  # fmt: skip
    for k in range(3):
        t = pick(tickers, "tick-spread")
        qs.append(_q(f"tick-spread-{k}", f"What was the average quoted spread of {t}, relative to the midpoint?",
                     load_q + f"x = q[q.ticker == '{t}']\nmid = (x.bid + x.ask) / 2\nprint(round(float(((x.ask - x.bid) / mid).mean() * 10000), 2))",
                     "number", 0.01, "Basis points (1 bp = 0.01%), a simple mean over quote updates (not time-weighted), rounded to 2 decimals."))  # fmt: skip
    for k in range(3):
        t = pick(tickers, "tick-atask")
        qs.append(_q(f"tick-atask-{k}", f"What fraction of {t}'s trades printed at or above the prevailing ask?",
                     load_t + load_q + f"x = t[t.ticker == '{t}'].sort_values('ts')\ny = q[q.ticker == '{t}'].sort_values('ts')\nm = pd.merge_asof(x, y, on='ts', allow_exact_matches=False)\nprint(round(float((m.price >= m.ask).mean()), 4))",
                     "number", 0.0001, "A ratio (0.25 means 25%); the prevailing quote is the ticker's last quote strictly before the trade's timestamp; rounded to 4 decimals.", unit="ratio"))  # fmt: skip
    for k in range(3):
        t, hh = pick(tickers, "tick-lastbefore"), int(rng.integers(10, 16))
        qs.append(_q(f"tick-lastbefore-{k}", f"What was the last trade price of {t} before {hh}:00?",
                     load_t + f"x = t[(t.ticker == '{t}') & (t.ts < pd.Timestamp('2024-03-14 {hh}:00:00'))].sort_values('ts', kind='stable')\nprint(round(float(x.price.iloc[-1]), 2))",
                     "number", 0.005, "Dollars, strictly before the full hour; rounded to 2 decimals."))  # fmt: skip
    for k in range(3):
        t = pick(tickers, "tick-volume")
        qs.append(_q(f"tick-volume-{k}", f"How many shares of {t} traded in the first 30 minutes of the session?",
                     load_t + f"x = t[(t.ticker == '{t}') & (t.ts < pd.Timestamp('2024-03-14 10:00:00'))]\nprint(int(x['size'].sum()))",
                     "number", 0, "Trades from 09:30:00 up to but not including 10:00:00; an integer."))  # fmt: skip
    for k in range(3):
        t = pick(tickers, "tick-range")
        qs.append(_q(f"tick-range-{k}", f"What was {t}'s intraday trade price range relative to its lowest trade price?",
                     load_t + f"x = t[t.ticker == '{t}'].price\nprint(round(100 * float(x.max() / x.min() - 1), 2))",
                     "number", 0.01, "Percent: (highest - lowest) / lowest, rounded to 2 decimals.", unit="percent"))  # fmt: skip
    for k in range(3):
        t = pick(tickers, "tick-emptybars")
        qs.append(_q(f"tick-emptybars-{k}", f"How many 1-minute bars of the session had no trade in {t}?",
                     load_t + f"x = t[t.ticker == '{t}']\nbars = ((x.ts - pd.Timestamp('2024-03-14 09:30:00')) // pd.Timedelta(minutes=1)).nunique()\nprint(390 - int(bars))",
                     "number", 0, "The session has 390 bars of 1 minute, starting at 09:30:00; an integer."))  # fmt: skip
    for k in range(3):
        t = pick(tickers, "tick-ret")
        qs.append(_q(f"tick-ret-{k}", f"What was {t}'s return from the first to the last midpoint quote of the day?",
                     load_q + f"x = q[q.ticker == '{t}'].sort_values('ts', kind='stable')\nmid = (x.bid + x.ask) / 2\nprint(round(float(mid.iloc[-1] / mid.iloc[0] - 1), 5))",
                     "number", 0.00001, "A ratio (0.01 means 1%), rounded to 5 decimals.", unit="ratio"))  # fmt: skip
    qs.append(_q("tick-most-0", "Which ticker had the largest traded dollar volume (price times size) over the day?",
                 load_t + "print((t.price * t['size']).groupby(t.ticker).sum().idxmax())",
                 "text", 0, "The ticker symbol only."))  # fmt: skip
    qs.append(_q("tick-rank-0", "List the three tickers with the most trades, from most to fewest.",
                 load_t + "print(', '.join(t.groupby('ticker').size().sort_values(ascending=False, kind='stable').index[:3]))",
                 "list", 0, "Ticker symbols separated by commas, in that order (order matters).", ordered=True))  # fmt: skip
    qs.append(_q("tick-count-0", "How many trades are there in the whole file?",
                 load_t + "print(len(t))", "number", 0, "An integer."))  # fmt: skip
    return qs


# --- scenario 3: portfolio with corporate actions ------------------------------------------------


def _portfolio(rng: np.random.Generator, out: Path) -> list[dict]:
    tickers = _tickers(rng, 15)
    days = pd.bdate_range("2024-06-03", periods=22)
    accounts = [f"ACC{n}" for n in range(1, 6)]
    positions = []
    for a in accounts:
        for t in rng.choice(tickers, size=int(rng.integers(4, 9)), replace=False):
            positions.append((a, str(t), int(rng.integers(1, 40)) * 10, 0.0))
    closes, actions = [], []
    split_t = set(rng.choice(tickers, size=2, replace=False).tolist())
    div_t = set(rng.choice([t for t in tickers if t not in split_t], size=5, replace=False).tolist())
    start_price = {}
    for t in tickers:
        price = float(rng.uniform(15, 250))
        start_price[t] = price
        split_day = int(rng.integers(5, 18)) if t in split_t else -1
        ratio = int(rng.choice([2, 3])) if t in split_t else 1
        if t in split_t:
            actions.append((t, days[split_day].date(), "split", float(ratio)))
        if t in div_t:
            actions.append((t, days[int(rng.integers(2, 20))].date(), "dividend", round(float(rng.uniform(0.1, 1.5)), 2)))
        for i, day in enumerate(days):
            if i == split_day:
                price /= ratio
            price *= float(np.exp(rng.normal(0.0005, 0.018)))
            closes.append((day.date(), t, round(price, 2)))
    positions = [(a, t, q, round(start_price[t] * float(rng.uniform(0.7, 1.3)), 2)) for a, t, q, _ in positions]
    pos = pd.DataFrame(positions, columns=["account", "ticker", "quantity", "avg_cost"])
    pos.to_parquet(out / "positions.parquet", index=False)
    px = pd.DataFrame(closes, columns=["date", "ticker", "close"])
    px["date"] = pd.to_datetime(px["date"])
    px.to_parquet(out / "prices.parquet", index=False)
    ca = pd.DataFrame(actions, columns=["ticker", "ex_date", "type", "value"]).sort_values(["ex_date", "ticker"])
    ca["ex_date"] = pd.to_datetime(ca["ex_date"])
    ca.to_parquet(out / "corporate_actions.parquet", index=False)
    (out / "description.md").write_text(
        "A portfolio of 5 accounts over 22 trading days (2024-06-03 to 2024-07-02); no trades happen in the period.\n"
        f"- {DATA_MOUNT}/positions.parquet: account, ticker, quantity, avg_cost (per share), as of the close before "
        "the first day, before any corporate action in the period.\n"
        f"- {DATA_MOUNT}/prices.parquet: date, ticker, close (raw, not adjusted).\n"
        f"- {DATA_MOUNT}/corporate_actions.parquet: ticker, ex_date, type ('split' or 'dividend'), value. A split "
        "of value r multiplies the quantity held by r from its ex_date on (the cost basis in dollars is "
        "unchanged); a dividend pays value dollars per share held on the day before its ex_date.\n"
    )
    held = (
        "pos = pd.read_parquet('/data/positions.parquet'); px = pd.read_parquet('/data/prices.parquet')\n"
        "ca = pd.read_parquet('/data/corporate_actions.parquet')\n"
        "def qty_on(day):\n"
        "    q = pos.copy()\n"
        "    for _, r in ca[(ca.type == 'split') & (ca.ex_date <= pd.Timestamp(day))].iterrows():\n"
        "        q.loc[q.ticker == r.ticker, 'quantity'] *= r.value\n"
        "    return q\n"
        "def value_on(day, account=None):\n"
        "    q = qty_on(day).merge(px[px.date == pd.Timestamp(day)], on='ticker')\n"
        "    q['mv'] = q.quantity * q.close\n"
        "    return q if account is None else q[q.account == account]\n"
    )
    pick = _Draws(rng)
    day_s = [d.date().isoformat() for d in days]
    last = day_s[-1]
    qs: list[dict] = []
    for k in range(3):
        a, d = pick(accounts, "pf-mv"), pick(day_s, "pf-mv")
        qs.append(_q(f"pf-mv-{k}", f"What was the market value of account {a} at the close of {d}?",
                     held + f"print(round(float(value_on('{d}', '{a}').mv.sum()), 2))",
                     "number", 0.005, "Dollars, quantities adjusted for splits up to that day, rounded to 2 decimals."))  # fmt: skip
    for k in range(3):
        a = accounts[k]
        qs.append(_q(f"pf-pnl-pct-{k}", f"What is the unrealized P&L of account {a} at the last close, relative to its cost basis?",
                     held + f"v = value_on('{last}', '{a}')\ncost = (pos[pos.account == '{a}'].quantity * pos[pos.account == '{a}'].avg_cost).sum()\nprint(round(100 * float(v.mv.sum() / cost - 1), 2))",
                     "number", 0.01, "Percent of the cost basis (quantity times avg_cost from positions.parquet), price change only (dividends excluded), rounded to 2 decimals.", unit="percent"))  # fmt: skip
    for k in range(3):
        a = accounts[k + 2]
        t = pick(pos[pos.account == a].ticker.tolist(), "pf-weight")
        qs.append(_q(f"pf-weight-{k}", f"What was the weight of {t} in account {a} at the last close?",
                     held + f"v = value_on('{last}', '{a}')\nprint(round(float(v[v.ticker == '{t}'].mv.sum() / v.mv.sum()), 4))",
                     "number", 0.0001, "A ratio of market values (0.25 means 25%), rounded to 4 decimals.", unit="ratio"))  # fmt: skip
    for k in range(3):
        a = accounts[k]
        qs.append(_q(f"pf-div-{k}", f"How much dividend income did account {a} receive in the period?",
                     held + f"total = 0.0\nfor _, r in ca[ca.type == 'dividend'].iterrows():\n    q = qty_on(r.ex_date - pd.Timedelta(days=1))\n    total += float((q[(q.account == '{a}') & (q.ticker == r.ticker)].quantity * r.value).sum())\nprint(round(total, 2))",
                     "number", 0.005, "Dollars, shares held on the day before each ex_date (after any earlier split), rounded to 2 decimals."))  # fmt: skip
    for k in range(3):
        a, i = pick(accounts, "pf-dayret"), int(rng.integers(1, len(day_s)))
        qs.append(_q(f"pf-dayret-{k}", f"What was the daily return of account {a} on {day_s[i]}?",
                     held + f"now = value_on('{day_s[i]}', '{a}').mv.sum()\nbefore = value_on('{day_s[i - 1]}', '{a}').mv.sum()\nprint(round(float(now / before - 1), 5))",
                     "number", 0.00001, f"A ratio (0.01 means 1%): market value at the close of {day_s[i]} over the previous trading day's close, minus 1, split-adjusted quantities, dividends excluded; rounded to 5 decimals.", unit="ratio"))  # fmt: skip
    for k in range(3):
        a = accounts[k + 1]
        qs.append(_q(f"pf-losers-{k}", f"Which positions of account {a} are below their cost at the last close?",
                     held + f"v = value_on('{last}', '{a}').merge(pos[['account', 'ticker', 'avg_cost']], on=['account', 'ticker'], suffixes=('', '_p'))\nc = pos[pos.account == '{a}'].set_index('ticker')\nlow = [t for t in v.ticker if v[v.ticker == t].mv.iloc[0] < c.loc[t, 'quantity'] * c.loc[t, 'avg_cost']]\nprint(', '.join(sorted(low)) or 'none')",
                     "list", 0, "Ticker symbols separated by commas, in any order ('none' if there are none); compare market value with quantity times avg_cost.", ))  # fmt: skip
    for k in range(3):
        t = sorted(split_t)[k % 2] if k < 2 else pick([x for x in tickers if x not in sorted(split_t)[:2]], "pf-adjret")
        qs.append(_q(f"pf-adjret-{k}", f"What was the split-adjusted return of {t} from the first to the last close?",
                     "px = pd.read_parquet('/data/prices.parquet'); ca = pd.read_parquet('/data/corporate_actions.parquet')\n"
                     f"x = px[px.ticker == '{t}'].sort_values('date').set_index('date').close\nfor _, r in ca[(ca.ticker == '{t}') & (ca.type == 'split')].iterrows():\n    x[x.index < r.ex_date] /= r.value\nprint(round(100 * float(x.iloc[-1] / x.iloc[0] - 1), 2))",
                     "number", 0.01, "Percent (5.25 means 5.25%), split-adjusted, dividends excluded, rounded to 2 decimals.", unit="percent"))  # fmt: skip
    for k in range(3):
        d = pick(day_s, "pf-largest")
        qs.append(_q(f"pf-largest-{k}", f"Which account had the largest market value at the close of {d}?",
                     held + f"print(value_on('{d}').groupby('account').mv.sum().idxmax())",
                     "text", 0, "The account id (for example ACC1)."))  # fmt: skip
    for k in range(3):
        t = pick(tickers, "pf-holders")
        qs.append(_q(f"pf-holders-{k}", f"How many shares of {t} do all accounts together hold at the last close?",
                     held + f"q = qty_on('{last}')\nprint(int(q[q.ticker == '{t}'].quantity.sum()))",
                     "number", 0, "Split-adjusted share count, an integer (0 if nobody holds it)."))  # fmt: skip
    qs.append(_q("pf-total-0", "What was the total market value of all accounts at the last close?",
                 held + f"print(round(float(value_on('{last}').mv.sum()), 2))",
                 "number", 0.005, "Dollars, split-adjusted quantities, rounded to 2 decimals."))  # fmt: skip
    qs.append(_q("pf-splits-0", "Which tickers split during the period?",
                 "ca = pd.read_parquet('/data/corporate_actions.parquet')\nprint(', '.join(sorted(ca[ca.type == 'split'].ticker)))",
                 "list", 0, "Ticker symbols separated by commas, in any order."))  # fmt: skip
    qs.append(_q("pf-count-0", "How many distinct tickers are held across all accounts?",
                 "pos = pd.read_parquet('/data/positions.parquet')\nprint(pos.ticker.nunique())",
                 "number", 0, "An integer."))  # fmt: skip
    return qs


SCENARIOS = {"daily_ohlcv": _daily, "tick_day": _tick, "portfolio": _portfolio}


def generate(out_dir: Path, seed: int = DEFAULT_SEED) -> Path:
    """Write the three default scenarios under out_dir (one folder each); returns out_dir."""
    out_dir = Path(out_dir)
    for offset, (name, build) in enumerate(SCENARIOS.items()):
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        questions = build(np.random.default_rng([seed, offset]), folder)
        assert len(questions) == 30, (name, len(questions))
        texts = [q["question"] for q in questions]
        assert len(set(texts)) == len(texts), f"{name}: a question appears twice"
        lines = []
        for q in questions:
            q["answer"] = run_reference(q.pop("_program"), folder)
            lines.append(json.dumps(q, sort_keys=True))
        (folder / "questions.jsonl").write_text("\n".join(lines) + "\n")
    (out_dir / "GENERATED").write_text(f"generator {GENERATOR_VERSION} seed {seed}\n")
    return out_dir
