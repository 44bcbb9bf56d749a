import threading
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from slfaas.billing.budgets import (Budget, BudgetExceeded, BudgetGuard, evaluate, format_usd,
                                    period_window)
from slfaas.errors import InvalidParameter, NotFound, TooManyRequests


def ts(*args) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


NOW = ts(2026, 11, 23, 12, 0)          # noon: half the day elapsed
CENT = Decimal("0.01")


# ---- Budget and windows ---------------------------------------------------------------------

def test_budget_create_validates():
    b = Budget.create("team-a.1_x", "0.10", "day", hard=True, function_name="f")
    assert b.limit_usd == Decimal("0.10") and b.hard and b.function_name == "f"
    assert Budget.create("b", 0.1, "month").limit_usd == Decimal("0.1")   # float via str
    for bad in (dict(name=""), dict(name="x" * 65), dict(name="a b"), dict(name="a/b"),
                dict(limit_usd="0"), dict(limit_usd="-1"), dict(limit_usd="lots"),
                dict(limit_usd="inf"), dict(period="week"), dict(function_name="  ")):
        args = dict(name="ok", limit_usd="1", period="day", hard=False) | bad
        with pytest.raises(InvalidParameter):
            Budget.create(**args)
    Budget.create("x" * 64, "1", "day")


def test_period_windows_are_utc_calendar():
    assert period_window("day", NOW) == (ts(2026, 11, 23), ts(2026, 11, 24))
    assert period_window("day", ts(2026, 11, 23)) == (ts(2026, 11, 23), ts(2026, 11, 24))
    assert period_window("month", NOW) == (ts(2026, 11, 1), ts(2026, 12, 1))
    assert period_window("month", ts(2026, 12, 31, 23, 59)) == (ts(2026, 12, 1), ts(2027, 1, 1))
    start, end = period_window("month", ts(2028, 2, 10))
    assert end - start == 29 * 86400
    with pytest.raises(InvalidParameter):
        period_window("year", NOW)


# ---- evaluate -------------------------------------------------------------------------------

@pytest.mark.parametrize("spent,projected,spent_level,projected_level,level", [
    ("0.30", "0.60", "ok", "ok", "ok"),
    ("0.39", "0.78", "ok", "ok", "ok"),
    ("0.40", "0.80", "ok", "warning", "warning"),      # projected crosses 80 %
    ("0.50", "1.00", "ok", "exceeded", "warning"),     # projected crosses 100 %: still a warning
    ("0.80", "1.60", "warning", "exceeded", "warning"),
    ("1.00", "2.00", "exceeded", "exceeded", "exceeded"),
])
def test_evaluate_levels_at_80_and_100_percent(spent, projected, spent_level, projected_level, level):
    st = evaluate(Budget.create("b", "1", "day"), Decimal(spent), NOW)
    assert st.projected_usd == Decimal(projected)
    assert (st.spent_level, st.projected_level, st.level) == (spent_level, projected_level, level)
    assert st.spent_fraction == pytest.approx(float(spent))
    assert not st.blocks      # soft
    assert (st.window_start_ts, st.window_end_ts) == (ts(2026, 11, 23), ts(2026, 11, 24))


def test_projection_uses_at_least_a_minute():
    st = evaluate(Budget.create("b", "1", "day"), Decimal("0.001"), ts(2026, 11, 23, 0, 0, 1))
    assert st.projected_usd == Decimal("0.001") * 86400 / 60
    st = evaluate(Budget.create("b", "1", "day"), Decimal("0"), ts(2026, 11, 23))
    assert st.projected_usd == 0 and st.level == "ok"


def test_hard_budget_blocks_with_one_line_message():
    st = evaluate(Budget.create("team-a", "0.0100", "day", hard=True), Decimal("0.0123"), NOW)
    assert st.blocks and st.level == "exceeded"
    assert st.message == ("budget 'team-a' (day, hard): spent $0.0123 of $0.0100 (123%); "
                          "invocations are throttled until 2026-11-24T00:00Z")
    soft = evaluate(Budget.create("team-a", "0.0100", "day"), Decimal("0.0123"), NOW)
    assert not soft.blocks and "throttled" not in soft.message
    ok = evaluate(Budget.create("m", "10", "month", function_name="f"), Decimal("1"), NOW)
    assert "function f" in ok.message and "projected" in ok.message and "2026-12-01T00:00Z" in ok.message


def test_format_usd():
    assert format_usd(Decimal(0)) == "$0.00"
    assert format_usd(Decimal("0.0123")) == "$0.0123"
    assert format_usd(Decimal("12.5")) == "$12.5000"
    assert format_usd(Decimal("0.0000002")) == "$0.00000020"
    assert format_usd(Decimal("0.00001234")) == "$0.000012"


# ---- BudgetGuard ----------------------------------------------------------------------------

def hard(limit="0.10", period="day", fn=None, name="cap"):
    return Budget.create(name, limit, period, hard=True, function_name=fn)


def test_burst_of_50_threads_stops_at_the_limit():
    guard = BudgetGuard([hard("0.10")])
    barrier = threading.Barrier(50)
    admitted, refused = [], []
    lock = threading.Lock()

    def call():
        barrier.wait()
        try:
            t = guard.admit("f", CENT, NOW)
        except BudgetExceeded:
            with lock:
                refused.append(1)
            return
        with lock:
            admitted.append(t)

    threads = [threading.Thread(target=call) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 10 <= len(admitted) <= 11 and len(admitted) + len(refused) == 50
    for t in admitted:
        t.settle(CENT)
    assert guard.spent_usd("cap", NOW) == CENT * len(admitted)
    with pytest.raises(BudgetExceeded):
        guard.admit("f", CENT, NOW)


def test_burst_with_settling_threads_spends_at_most_one_overshoot():
    guard = BudgetGuard([hard("0.10")])
    barrier = threading.Barrier(50)
    count = []

    def call():
        barrier.wait()
        try:
            with guard.admit("f", CENT, NOW) as t:
                t.settle(CENT)
                count.append(1)
        except BudgetExceeded:
            pass

    threads = [threading.Thread(target=call) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(count) <= 11
    assert guard.spent_usd("cap", NOW) <= Decimal("0.11")


def test_first_request_admitted_while_spent_below_limit_and_error_shape():
    guard = BudgetGuard([hard("0.10")])
    guard.seed("cap", Decimal("0.0999"), NOW)
    t = guard.admit("f", Decimal("5"), NOW)          # estimate far above what is left: still one
    with pytest.raises(BudgetExceeded) as info:
        guard.admit("f", Decimal("0"), NOW)
    t.settle(Decimal("0.02"))
    assert guard.spent_usd("cap", NOW) == Decimal("0.1199")
    with pytest.raises(BudgetExceeded) as info:
        guard.admit("f", Decimal("0"), NOW)
    err = info.value
    assert isinstance(err, TooManyRequests) and err.reason == "BudgetExceeded"
    assert err.until_ts == ts(2026, 11, 24) and err.budget.name == "cap"
    msg = str(err)
    assert "\n" not in msg
    for part in ("'cap'", "$0.1000", "$0.1199", "2026-11-24T00:00Z", "`slfaas cost budget set cap --usd X`"):
        assert part in msg


def test_cancel_releases_without_spending_and_tickets_close_once():
    guard = BudgetGuard([hard("0.10")])
    t = guard.admit("f", Decimal("0.10"), NOW)
    with pytest.raises(BudgetExceeded):
        guard.admit("f", CENT, NOW)
    t.cancel()
    t.cancel()                                    # no-op
    with pytest.raises(RuntimeError):
        t.settle(CENT)
    assert guard.spent_usd("cap", NOW) == 0
    with pytest.raises(KeyError):
        with guard.admit("f", CENT, NOW):         # an error inside the block cancels
            raise KeyError("boom")
    guard.admit("f", Decimal("0.09"), NOW)        # nothing leaked: 0.09 in flight < 0.10
    with pytest.raises(ValueError):
        guard.admit("f", Decimal("-1"), NOW)


def test_scope_and_soft_budgets():
    guard = BudgetGuard([hard("0.05", fn="a", name="a-cap"), Budget.create("all", "0.01", "day")])
    guard.admit("a", CENT, NOW).settle(Decimal("0.05"))
    with pytest.raises(BudgetExceeded, match="a-cap"):
        guard.admit("a", CENT, NOW)
    guard.admit("b", CENT, NOW).settle(CENT)      # only the soft budget covers b: never blocks
    assert guard.spent_usd("all", NOW) == Decimal("0.06")
    assert guard.spent_usd("a-cap", NOW) == Decimal("0.05")
    levels = {s.budget.name: (s.level, s.blocks) for s in guard.statuses(NOW)}
    assert levels == {"a-cap": ("exceeded", True), "all": ("exceeded", False)}


def test_period_roll_over_resets_spend():
    guard = BudgetGuard([hard("0.10")])
    late = ts(2026, 11, 23, 23, 59, 59)
    guard.admit("f", CENT, late).settle(Decimal("0.10"))
    with pytest.raises(BudgetExceeded):
        guard.admit("f", CENT, late)
    next_day = ts(2026, 11, 24, 0, 0, 0)
    t = guard.admit("f", CENT, next_day)
    assert guard.spent_usd("cap", next_day) == 0
    t.settle(CENT, now_ts=next_day)
    assert guard.spent_usd("cap", next_day) == CENT


def test_ticket_spanning_roll_over_counts_when_it_ends_and_leaks_nothing():
    guard = BudgetGuard([hard("0.10")])
    t = guard.admit("f", Decimal("0.09"), ts(2026, 11, 23, 23, 59))
    next_day = ts(2026, 11, 24, 0, 1)
    t2 = guard.admit("f", Decimal("0.09"), next_day)   # new window: old reservation gone
    t.settle(Decimal("0.02"), now_ts=next_day)
    t2.cancel()
    assert guard.spent_usd("cap", next_day) == Decimal("0.02")
    guard.admit("f", Decimal("0.07"), next_day)
    guard.admit("f", CENT, next_day)                   # 0.02 spent + 0.07 in flight < 0.10
    with pytest.raises(BudgetExceeded):                # 0.02 spent + 0.08 in flight
        guard.admit("f", CENT, next_day)


def test_seed_and_set_budgets():
    guard = BudgetGuard([hard("0.10")])
    guard.seed("cap", Decimal("0.10"), ts(2026, 11, 22, 8))   # yesterday's spend: rolled over
    guard.admit("f", CENT, NOW).cancel()
    guard.seed("cap", Decimal("0.10"), ts(2026, 11, 23))      # today's
    with pytest.raises(BudgetExceeded):
        guard.admit("f", CENT, NOW)
    guard.set_budgets([hard("0.20")])                          # raised: spend kept, admits again
    assert guard.spent_usd("cap", NOW) == Decimal("0.10")
    guard.admit("f", CENT, NOW)
    guard.set_budgets([hard("0.20", period="month")])          # period changed: starts over
    assert guard.spent_usd("cap", NOW) == 0
    with pytest.raises(NotFound):
        guard.seed("nope", Decimal(1), NOW)
    with pytest.raises(InvalidParameter):
        guard.set_budgets([hard(), hard()])
