"""How `jobstate demo` shows itself: live progress on stderr, a summary table."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from .runner import Scenario


class DemoProgress:
    """A bar per scenario when stderr is a terminal; one line per finished one otherwise."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.fields[name]:<5}"), BarColumn(bar_width=30),
            TaskProgressColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
            console=console, transient=False)
        self.tasks: dict[str, TaskID] = {}
        self.reported: set[str] = set()

    def __enter__(self) -> DemoProgress:
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.live:
            self.progress.stop()

    def __call__(self, scenarios: list[Scenario]) -> None:
        for sc in scenarios:
            status = sc.view.status.value if sc.view else "STARTING"
            info = f"{status:<9} {_amount(sc.done)}/{_amount(sc.total)} {sc.unit}"
            if self.live:
                if sc.name not in self.tasks:
                    self.tasks[sc.name] = self.progress.add_task(
                        sc.title, total=sc.total or 1, name=sc.name, info=info)
                self.progress.update(self.tasks[sc.name], completed=sc.done,
                                     total=sc.total or 1, info=info)
            elif sc.ended is not None and sc.name not in self.reported:
                self.reported.add(sc.name)
                self.console.print(f"{sc.name}: {status} after "
                                   f"{sc.ended - sc.started:.1f}s ({sc.title})")


def _amount(x: float | None) -> str:
    if x is None:
        return "?"
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.1f}"


def summary_table(result: dict[str, Any]) -> Table:
    chaos = result["chaos"]
    kinds = ", ".join(f"{k}={chaos[k]:g}" for k in ("duplicate", "crash", "lost",
                                                      "throttle_invoke", "throttle_dynamodb"))
    on = "on" if any(chaos[k] for k in ("duplicate", "crash", "lost", "throttle_invoke",
                                        "throttle_dynamodb")) else "off"
    table = Table(title=f"jobstate demo: effects executed vs expected, chaos {on}",
                  caption=f"seed {result['seed']}; chaos {kinds}; wall {result['wall_s']:.1f}s, "
                          f"{result['runtime']['sweeps']} sweeps, "
                          f"{result['runtime']['cold_starts']} cold starts",
                  box=box.SIMPLE_HEAD, padding=0, pad_edge=False)
    for col in ("scenario", "status", "invoc.", "steps", "dups", "crashes", "kills",
                "lost", "effects\nexpected", "effects\nexecuted", "secs"):
        table.add_column(col, justify="left" if col in ("scenario", "status") else "right")
    for s in result["scenarios"]:
        effects_style = "green" if s["effects_executed"] == s["effects_expected"] else "red"
        table.add_row(
            s["name"], f"[{'green' if s['ok'] else 'red'}]{s['status']}",
            str(s["invocations"]), str(s["steps"]), str(s["duplicates_delivered"]),
            str(s["crashes_injected"]), str(s["kills_at_timeout"]),
            str(s["lost_continuations"]), str(s["effects_expected"]),
            f"[{effects_style}]{s['effects_executed']}", f"{s['wall_s']:.1f}")
    return table
