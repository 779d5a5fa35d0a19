"""``stackyard event``: the project's event log, oldest first, and with ``--watch`` the new ones as they come."""

from __future__ import annotations

import time

from cli.client import Client
from cli.errors import EXIT_OK
from cli.output import console
from cli.tables import event_cells, events_table

WATCH_SECONDS = 2.0
RECENT = 50  # the API's page: a terminal's worth of history


def _key(event: dict) -> tuple:
    return (event.get("created_at"), event.get("resource_type"), event.get("resource_name"), event.get("kind"),
            event.get("message"))


def recent_events(client: Client, **filters) -> list[dict]:
    """The newest RECENT events, oldest first."""
    return list(reversed(client.get("events/", page_size=RECENT, **filters)["results"]))


def show_events(client: Client, *, watch: bool, iterations: int | None = None, **filters) -> int:
    events = recent_events(client, **filters)
    console.print(events_table(events))
    if not watch:
        return EXIT_OK
    seen = {_key(event) for event in events}
    newest = events[-1]["created_at"] if events else ""
    count = 0
    try:
        while iterations is None or count < iterations:
            count += 1
            time.sleep(WATCH_SECONDS)
            page = recent_events(client, **filters)
            for event in page:
                if _key(event) not in seen and event["created_at"] >= newest:
                    console.print("  ".join(event_cells(event)))
            seen = {_key(event) for event in page}
            newest = page[-1]["created_at"] if page else newest
    except KeyboardInterrupt:
        pass
    return EXIT_OK
