"""How the CLI shows things: rich tables for lists, short words for specs, red lines for errors.

Both consoles look up ``sys.stdout``/``sys.stderr`` at each print, so a test runner that swaps them
(typer's ``CliRunner``) sees everything. Off a terminal rich prints plain text, no colour codes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

STATUS_STYLES = {
    "running": "green", "done": "green", "active": "green", "ready": "green", "healthy": "green",
    "failed": "red", "error": "red", "down": "red", "terminated": "dim", "deleted": "dim",
    "terminating": "yellow", "deleting": "yellow", "degraded": "yellow", "draining": "yellow",
}


def error(message: str) -> None:
    err_console.print(f"[red]Error:[/red] {escape(message)}", style="red", soft_wrap=True)


def escape(text: str) -> str:
    """Text shown as it is, never read as rich markup (``[HTTP 400]`` would be eaten as a tag)."""
    return str(text).replace("[", r"\[")


def styled(status: str | None) -> str:
    text = escape(status or "-")
    style = STATUS_STYLES.get(status or "")
    return f"[{style}]{text}[/{style}]" if style else text


def table(*columns: str) -> Table:
    """A borderless table whose cells wrap (never cut) when the terminal is narrow."""
    grid = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        grid.add_column(column, overflow="fold")
    return grid


def age(timestamp: str | None) -> str:
    """'3m ago' from an ISO timestamp of the API (UTC)."""
    if not timestamp:
        return "-"
    try:
        then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return timestamp
    seconds = max(0, int((datetime.now(UTC) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def span(value: dict | None, unit: str = "") -> str:
    """A range of the normalized spec ({"min", "max"}) as dstack writes it: 2, 2..8, 8GB.."""
    if not isinstance(value, dict):
        return "-" if value is None else f"{_number(value)}{unit}"
    low, high = value.get("min"), value.get("max")
    low_text = "" if low is None else f"{_number(low)}{unit}"
    if low == high and low is not None:
        return low_text
    return f"{low_text}..{'' if high is None else f'{_number(high)}{unit}'}"


def resources(spec: dict) -> str:
    """The resources of a run or fleet spec in one line: cpu=2.. mem=8GB.. disk=100GB.. gpu=A100:2."""
    res = spec.get("resources") or {}
    parts = [f"cpu={span(res.get('cpu'))}", f"mem={span(res.get('memory'), 'GB')}",
             f"disk={span(res.get('disk'), 'GB')}"]
    gpu = res.get("gpu") or {}
    count = gpu.get("count") or {}
    if gpu.get("name") or gpu.get("memory") or (count.get("min") or 0) > 0:
        names = gpu.get("name")
        names = ",".join(names) if isinstance(names, list) else (names or "")
        memory = span(gpu.get("memory"), "GB") if gpu.get("memory") else ""
        parts.append("gpu=" + ":".join(part for part in (names, memory, span(count)) if part))
    return " ".join(parts)


def compact(value) -> str:
    """A spec value in one short line (JSON for lists and mappings)."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and {"min", "max"} <= set(value):
        return span(value)  # a range of the normalized spec (nodes, cpu...), as the file writes it
    text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    return text if len(text) <= 100 else text[:97] + "..."


def replicas(run: dict) -> str:
    counts = run.get("replicas")
    if not counts:
        return "-"
    return f"{counts.get('ready', 0)}/{counts.get('desired', 0)} ready"


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
