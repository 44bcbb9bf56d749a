"""Budgets (IO-free): how spend in the current UTC day or month compares with a limit, and an
admission guard so a hard budget stops a burst at its limit.

Spend is known only when an invocation ends, so a burst admitted at once would all pass a
check of ``spent < limit``. The guard therefore reserves each admitted request's estimated
cost until it settles: a request is refused once ``spent + reserved >= limit``. With honest
estimates at most the one request that crosses the limit overshoots it.
"""
from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Iterable

from slfaas.billing.prices import COST_QUANTUM
from slfaas.errors import InvalidParameter, NotFound, TooManyRequests

PERIODS = ("day", "month")
LEVELS = ("ok", "warning", "exceeded")
WARNING_FRACTION = Decimal("0.8")
# A projection from the first seconds of a period is noise (one request x 86400): extrapolate
# from at least this much elapsed time.
MIN_PROJECTION_ELAPSED_S = 60.0

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class BudgetExceeded(TooManyRequests):
    """A hard budget refuses an invocation until its period ends."""

    def __init__(self, message: str, budget: Budget, spent_usd: Decimal, until_ts: float):
        super().__init__(message, reason="BudgetExceeded")
        self.budget = budget
        self.spent_usd = spent_usd
        self.until_ts = until_ts        # when the period ends and invocations are admitted again


def _usd(value: Decimal | str | int | float, what: str) -> Decimal:
    if isinstance(value, bool):
        raise InvalidParameter(f"{what} must be a number, got {value!r}")
    try:
        return value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        raise InvalidParameter(f"{what} must be a number, got {value!r}") from None


@dataclass(frozen=True)
class Budget:
    name: str
    limit_usd: Decimal
    period: str                         # "day" | "month" (UTC calendar)
    hard: bool                          # hard: throttle invocations once spent; soft: report only
    function_name: str | None = None    # scope; None = all functions

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise InvalidParameter(f"budget name {self.name!r} must be 1-64 characters of A-Z a-z 0-9 _ . -")
        if (not isinstance(self.limit_usd, Decimal) or not self.limit_usd.is_finite()
                or self.limit_usd <= 0):
            raise InvalidParameter(f"budget {self.name!r}: limit must be a positive amount of USD, "
                                   f"got {self.limit_usd!r}")
        if self.period not in PERIODS:
            raise InvalidParameter(f"budget {self.name!r}: period must be one of {', '.join(PERIODS)}, "
                                   f"got {self.period!r}")
        if self.function_name is not None and (not isinstance(self.function_name, str)
                                               or not self.function_name.strip() or len(self.function_name) > 170):
            raise InvalidParameter(f"budget {self.name!r}: function name must be 1-170 characters")

    @classmethod
    def create(cls, name: str, limit_usd: Decimal | str | int | float, period: str = "day",
               hard: bool = False, function_name: str | None = None) -> Budget:
        """From user input: the limit may be a string or number (floats via their str)."""
        return cls(name=name, limit_usd=_usd(limit_usd, f"budget {name!r}: limit"),
                   period=period, hard=bool(hard), function_name=function_name or None)

    def applies_to(self, function_name: str) -> bool:
        return self.function_name is None or self.function_name == function_name


def period_window(period: str, now_ts: float) -> tuple[float, float]:
    """[start, end) of the UTC calendar day or month containing ``now_ts``."""
    now = datetime.fromtimestamp(now_ts, tz=timezone.utc)
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        end_ts = start.timestamp() + 86400.0
        return start.timestamp(), end_ts
    if period == "month":
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        return start.timestamp(), end.timestamp()
    raise InvalidParameter(f"period must be one of {', '.join(PERIODS)}, got {period!r}")


def format_usd(value: Decimal) -> str:
    """Dollars for one-line messages: 4 decimals, or 2 significant digits below $0.0001."""
    if value == 0:
        return "$0.00"
    if abs(value) >= Decimal("0.0001"):
        return f"${value:.4f}"
    places = min(10, 1 - value.adjusted())
    return f"${value:.{places}f}"


def format_ts(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


def _fraction(part: Decimal, whole: Decimal) -> float:
    return float(part / whole)


def _level(amount: Decimal, limit: Decimal) -> str:
    if amount >= limit:
        return "exceeded"
    if amount >= limit * WARNING_FRACTION:
        return "warning"
    return "ok"


@dataclass(frozen=True)
class BudgetStatus:
    """Where a budget stands now.

    ``spent_level`` and ``projected_level`` apply the same thresholds (warning at 80 % of the
    limit, exceeded at 100 %) to what was spent and to the linear projection over the whole
    period. ``level`` combines them for one glance: "exceeded" only when spent has reached
    the limit, "warning" when either spent or projected reached 80 %, else "ok"."""

    budget: Budget
    spent_usd: Decimal
    projected_usd: Decimal
    spent_fraction: float
    projected_fraction: float
    spent_level: str
    projected_level: str
    level: str
    blocks: bool                # hard, and spent has reached the limit
    window_start_ts: float
    window_end_ts: float
    message: str


def _describe(budget: Budget) -> str:
    scope = f", function {budget.function_name}" if budget.function_name else ""
    return f"budget '{budget.name}' ({budget.period}, {'hard' if budget.hard else 'soft'}{scope})"


def evaluate(budget: Budget, spent_usd: Decimal, now_ts: float) -> BudgetStatus:
    """Status of ``budget`` given what was spent in the period containing ``now_ts``."""
    start_ts, end_ts = period_window(budget.period, now_ts)
    elapsed_s = min(end_ts - start_ts, max(MIN_PROJECTION_ELAPSED_S, now_ts - start_ts))
    period_s = end_ts - start_ts
    projected = (spent_usd * Decimal(repr(period_s)) / Decimal(repr(elapsed_s))).quantize(COST_QUANTUM)
    projected = max(projected, spent_usd)
    spent_level = _level(spent_usd, budget.limit_usd)
    projected_level = _level(projected, budget.limit_usd)
    if spent_level == "exceeded":
        level = "exceeded"
    elif spent_level == "warning" or projected_level != "ok":
        level = "warning"
    else:
        level = "ok"
    blocks = budget.hard and spent_level == "exceeded"
    spent_frac = _fraction(spent_usd, budget.limit_usd)
    head = (f"{_describe(budget)}: spent {format_usd(spent_usd)} of {format_usd(budget.limit_usd)} "
            f"({spent_frac:.0%})")
    if blocks:
        message = f"{head}; invocations are throttled until {format_ts(end_ts)}"
    elif spent_level == "exceeded":
        message = f"{head}; over the limit until the period ends at {format_ts(end_ts)}"
    else:
        message = (f"{head}, projected {format_usd(projected)} "
                   f"({_fraction(projected, budget.limit_usd):.0%}) by {format_ts(end_ts)}")
    return BudgetStatus(budget=budget, spent_usd=spent_usd, projected_usd=projected,
                        spent_fraction=spent_frac,
                        projected_fraction=_fraction(projected, budget.limit_usd),
                        spent_level=spent_level, projected_level=projected_level, level=level,
                        blocks=blocks, window_start_ts=start_ts, window_end_ts=end_ts,
                        message=message)


# ---- admission ------------------------------------------------------------------------------

class _Window:
    """Mutable spend of one budget in one period; only touched under the guard's lock."""

    __slots__ = ("start_ts", "end_ts", "spent_usd", "reserved_usd")

    def __init__(self, start_ts: float, end_ts: float, spent_usd: Decimal = Decimal(0)):
        self.start_ts = start_ts
        self.end_ts = end_ts
        self.spent_usd = spent_usd
        self.reserved_usd = Decimal(0)


class Ticket:
    """An admitted invocation's reservation. Close it once: ``settle`` with the actual cost,
    or ``cancel`` when the invocation did not run. As a context manager it cancels on exit
    unless settled, so an exception cannot leak a reservation."""

    def __init__(self, guard: BudgetGuard, function_name: str, estimate_usd: Decimal,
                 reserved: dict[str, _Window]):
        self._guard = guard
        self.function_name = function_name
        self.estimate_usd = estimate_usd
        self._reserved = reserved       # budget name -> the window the estimate is held in
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def settle(self, actual_usd: Decimal, now_ts: float | None = None) -> None:
        """Release the reservation and add the actual cost to the spend of each budget in
        scope (of the period containing ``now_ts`` when given: costs count when they end)."""
        if not isinstance(actual_usd, Decimal) or not actual_usd.is_finite() or actual_usd < 0:
            raise ValueError(f"actual cost must be a finite Decimal >= 0, got {actual_usd!r}")
        self._guard._close(self, actual_usd, now_ts)

    def cancel(self) -> None:
        """Release the reservation without spending; a no-op on a closed ticket."""
        self._guard._close(self, None, None)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class BudgetGuard:
    """In-memory admission for hard budgets (and spend tracking for all), thread-safe.

    ``function_name`` is compared as given with ``Budget.function_name``: callers pass the
    unqualified function name. Windows roll over lazily when a call's time has left them."""

    def __init__(self, budgets: Iterable[Budget] = ()):
        self._lock = threading.Lock()
        self._budgets: dict[str, Budget] = {}
        self._windows: dict[str, _Window] = {}
        self.set_budgets(budgets)

    def set_budgets(self, budgets: Iterable[Budget]) -> None:
        """Replace the budgets. A budget kept with the same name, period and scope keeps its
        spend (a raised limit applies at once); others start from 0 until ``seed``."""
        new = {}
        for b in budgets:
            if b.name in new:
                raise InvalidParameter(f"budget {b.name!r} is given twice")
            new[b.name] = b
        with self._lock:
            for name in list(self._windows):
                old, b = self._budgets.get(name), new.get(name)
                if b is None or old is None or (old.period, old.function_name) != (b.period, b.function_name):
                    del self._windows[name]
            self._budgets = new

    def budgets(self) -> list[Budget]:
        with self._lock:
            return sorted(self._budgets.values(), key=lambda b: b.name)

    def seed(self, budget_name: str, spent_usd: Decimal, window_start_ts: float) -> None:
        """Spend so far in the window containing ``window_start_ts`` (from the registry, at
        start-up); reservations in flight in that window are kept."""
        with self._lock:
            budget = self._budgets.get(budget_name)
            if budget is None:
                raise NotFound(f"no budget named {budget_name!r}")
            start_ts, end_ts = period_window(budget.period, window_start_ts)
            window = self._windows.get(budget_name)
            if window is not None and window.start_ts == start_ts:
                window.spent_usd = spent_usd
            else:
                self._windows[budget_name] = _Window(start_ts, end_ts, spent_usd)

    def spent_usd(self, budget_name: str, now_ts: float) -> Decimal:
        """Settled spend of the budget in the period containing ``now_ts`` (0 when unknown)."""
        with self._lock:
            budget = self._budgets.get(budget_name)
            if budget is None:
                raise NotFound(f"no budget named {budget_name!r}")
            return self._window(budget, now_ts).spent_usd

    def statuses(self, now_ts: float) -> list[BudgetStatus]:
        with self._lock:
            spent = [(b, self._window(b, now_ts).spent_usd)
                     for b in sorted(self._budgets.values(), key=lambda b: b.name)]
        return [evaluate(b, s, now_ts) for b, s in spent]

    def admit(self, function_name: str, estimate_usd: Decimal, now_ts: float) -> Ticket:
        """Reserve ``estimate_usd`` in every budget in scope, or raise ``BudgetExceeded`` if a
        hard one has no room left (spent + in flight >= limit). An estimate of 0 reserves
        nothing, so concurrent requests are then only stopped once their costs settle."""
        if not isinstance(estimate_usd, Decimal) or not estimate_usd.is_finite() or estimate_usd < 0:
            raise ValueError(f"estimate must be a finite Decimal >= 0, got {estimate_usd!r}")
        if not math.isfinite(now_ts):
            raise ValueError(f"now_ts must be finite, got {now_ts}")
        with self._lock:
            in_scope = [b for b in sorted(self._budgets.values(), key=lambda b: b.name)
                        if b.applies_to(function_name)]
            windows = {b.name: self._window(b, now_ts) for b in in_scope}
            for b in in_scope:
                w = windows[b.name]
                if b.hard and w.spent_usd + w.reserved_usd >= b.limit_usd:
                    raise BudgetExceeded(_refusal(b, w), b, w.spent_usd, w.end_ts)
            for w in windows.values():
                w.reserved_usd += estimate_usd
        return Ticket(self, function_name, estimate_usd, windows)

    def spend(self, function_name: str, actual_usd: Decimal, now_ts: float) -> None:
        """Spend that was not admitted through a ticket (none was open for it): counted all the same."""
        with self._lock:
            for b in self._budgets.values():
                if b.applies_to(function_name):
                    self._window(b, now_ts).spent_usd += actual_usd

    # -- under the lock --

    def _window(self, budget: Budget, now_ts: float) -> _Window:
        """The budget's current window, rolled forward when ``now_ts`` has left it. A late
        time (before the window) counts in the current window rather than reopening one."""
        w = self._windows.get(budget.name)
        if w is None or now_ts >= w.end_ts:
            w = _Window(*period_window(budget.period, now_ts))
            self._windows[budget.name] = w
        return w

    def _close(self, ticket: Ticket, actual_usd: Decimal | None, now_ts: float | None) -> None:
        """Settle (``actual_usd`` given) or cancel (None) a ticket. Settling twice is a bug in
        the caller; cancelling a closed ticket is a no-op (``with`` blocks cancel on exit)."""
        with self._lock:
            if ticket._closed:
                if actual_usd is None:
                    return
                raise RuntimeError("ticket already settled or cancelled")
            ticket._closed = True
            for name, held in ticket._reserved.items():
                # A window replaced since admission (roll-over, set_budgets, seed of another
                # window) no longer holds this reservation.
                if self._windows.get(name) is held:
                    held.reserved_usd -= ticket.estimate_usd
                budget = self._budgets.get(name)
                if actual_usd is None or budget is None or not budget.applies_to(ticket.function_name):
                    continue
                self._window(budget, held.start_ts if now_ts is None else now_ts).spent_usd += actual_usd


def _refusal(budget: Budget, window: _Window) -> str:
    in_flight = f" (+{format_usd(window.reserved_usd)} in flight)" if window.reserved_usd else ""
    return (f"{_describe(budget)}: spent {format_usd(window.spent_usd)}{in_flight} of limit "
            f"{format_usd(budget.limit_usd)}; invocations are throttled until "
            f"{format_ts(window.end_ts)}; raise it with `slfaas cost budget set {budget.name} --usd X`")
