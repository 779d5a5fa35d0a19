"""One table per kind of resource, with the columns ``dstack ps``/``fleet``/``volume`` users look for."""

from __future__ import annotations

from rich.table import Table

from cli.output import age, compact, escape, replicas, resources, styled, table


def runs_table(runs: list[dict]) -> Table:
    grid = table("NAME", "TYPE", "STATUS", "REPLICAS", "RESOURCES", "SUBMITTED", "MESSAGE")
    for run in runs:
        message = run.get("status_message") or run.get("termination_reason") or ""
        grid.add_row(escape(run["name"]), run.get("type", ""), styled(run.get("status")), replicas(run),
                     escape(resources(run.get("spec") or {})), age(run.get("submitted_at")), escape(message))
    return grid


def fleets_table(fleets: list[dict]) -> Table:
    grid = table("NAME", "STATUS", "NODES", "INSTANCES", "RESOURCES", "MESSAGE")
    for fleet in fleets:
        spec = fleet.get("spec") or {}
        nodes = spec.get("nodes")
        grid.add_row(escape(fleet["name"]), styled(fleet.get("status")), escape(_nodes(nodes)),
                     escape(", ".join(fleet.get("instances") or []) or "-"), escape(resources(spec)),
                     escape(fleet.get("status_message") or ""))
    return grid


def volumes_table(volumes: list[dict]) -> Table:
    grid = table("NAME", "STATUS", "BACKEND", "REGION", "SIZE", "ATTACHED TO", "MESSAGE")
    for volume in volumes:
        attached = [a.get("instance") or "?" for a in volume.get("attachments") or [] if a.get("status") != "detached"]
        size = f"{volume['size_gb']}GB" if volume.get("size_gb") is not None else "-"
        grid.add_row(escape(volume["name"]), styled(volume.get("status")), escape(volume.get("backend") or "-"),
                     escape(volume.get("availability_zone") or volume.get("region") or "-"), size,
                     escape(", ".join(attached) or "-"), escape(volume.get("status_message") or ""))
    return grid


def backends_table(backends: list[dict]) -> Table:
    grid = table("NAME", "TYPE", "STATUS", "CONFIG", "MESSAGE")
    for backend in backends:
        grid.add_row(escape(backend["name"]), backend.get("type", ""), styled(backend.get("status")),
                     escape(compact(backend.get("config") or {})), escape(backend.get("status_message") or ""))
    return grid


def events_table(events: list[dict]) -> Table:
    grid = table("TIME", "RESOURCE", "EVENT", "MESSAGE", "ACTOR")
    for event in events:
        grid.add_row(*event_cells(event))
    return grid


def event_cells(event: dict) -> tuple[str, ...]:
    when = (event.get("created_at") or "")[:19].replace("T", " ")
    return (when, escape(f"{event.get('resource_type')}/{event.get('resource_name')}"), styled(event.get("kind")),
            escape(event.get("message") or ""), escape(event.get("actor") or ""))


def _nodes(nodes) -> str:
    if isinstance(nodes, dict):
        low, high = nodes.get("min"), nodes.get("max")
        return str(low) if low == high else f"{low}..{'' if high is None else high}"
    return "-" if nodes is None else str(nodes)
