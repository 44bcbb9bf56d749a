"""Output for people: progress of long work on stderr (a live rich display on a terminal, plain
lines otherwise, nothing with --quiet) and tables on stdout (rich on a terminal, plain aligned
columns when piped, so grep and awk keep working)."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import click
from rich.console import Console
from rich.status import Status
from rich.table import Table
from rich.text import Text


class Step:
    """One stage of long work; ``update`` says how it is going, ``note`` adds a line above it."""

    def __init__(self, ui: "Ui", text: str, status: Status | None, plain: bool = True):
        self._ui, self.text, self._status, self._plain = ui, text, status, plain
        self.done_text = text
        self._last = ""

    def update(self, detail: str) -> None:
        if self._status is not None:
            self._status.update(f"{self.text}: {detail}")
        elif detail != self._last and self._plain:
            self._ui.line(f"  {detail}")
        self._last = detail

    def note(self, line: str) -> None:
        """A line of the work's own output: kept above the spinner, which shows the latest."""
        if self._status is not None:
            self._ui.console.print(line, markup=False, highlight=False)
            self._status.update(f"{self.text}: {line.strip()}")
        elif self._plain:
            self._ui.line(line)

    def done(self, text: str) -> None:
        self.done_text = text


class Ui:
    def __init__(self, quiet: bool = False, console: Console | None = None):
        self.quiet = quiet
        self.console = console or Console(stderr=True)

    @property
    def live(self) -> bool:
        """A live display only where someone watches it: stderr is a terminal."""
        return not self.quiet and self.console.is_terminal

    def line(self, text: str) -> None:
        if not self.quiet:
            click.echo(text, err=True)

    @contextmanager
    def step(self, text: str, plain: bool = True) -> Iterator[Step]:
        """``plain``: without a live display, say ``text`` as a line (else nothing)."""
        if not self.live:
            if plain:
                self.line(text)
            yield Step(self, text, None, plain)
            return
        t0 = time.monotonic()
        with self.console.status(text) as status:
            step = Step(self, text, status)
            yield step
        self.console.print(f"[green]✓[/] {step.done_text} [dim]({time.monotonic() - t0:.1f} s)[/]", highlight=False)

    @contextmanager
    def counted(self, text: str, total: int, plain: bool = True) -> Iterator[Callable[[], None]]:
        """Work of ``total`` units: yields ``advance()``, called once per unit done."""
        if not self.live:
            if plain:
                self.line(text)
            yield lambda: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
        from rich.progress import TimeElapsedColumn

        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=self.console) as progress:
            task = progress.add_task(text, total=total)
            yield lambda: progress.advance(task, 1)


def stdout_console() -> Console:
    return Console(soft_wrap=True)


def rich_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None,
               right: Sequence[str] = ()) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", box=None, header_style="bold",
                  pad_edge=False)
    for h in headers:
        table.add_column(h, justify="right" if h in right else "left", no_wrap=True, overflow="ellipsis")
    for row in rows:
        table.add_row(*(Text("" if v is None else str(v)) for v in row))  # Text: "[...]" is not markup
    return table


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None,
                right: Sequence[str] = ()) -> None:
    """Columns ``right`` are right-aligned (numbers)."""
    console = stdout_console()
    if console.is_terminal:
        console.print(rich_table(headers, rows, title, right))
        return
    cells = [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    if title:
        click.echo(title)

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if h in right else v.ljust(w)
                         for v, w, h in zip(row, widths, headers)).rstrip()
    click.echo(fmt(list(headers)))
    for row in cells:
        click.echo(fmt(row))


@contextmanager
def progress_bars(quiet: bool) -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """rich progress bars on stderr; silent with -q or when stderr is not a terminal (logs, CI)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=quiet or not console.is_terminal, transient=False) as bar:
        def start(what: str, total: int) -> Callable[[int], None]:
            task = bar.add_task(what, total=total)
            return lambda n: bar.advance(task, n)
        yield start
