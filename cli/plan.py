"""The plan of an apply, as the server's dry run states it: what would be created, or what an update
changes (fields old → new, and for a service the replicas started, stopped and replaced).

Environment values are never shown (they are often tokens): only their names.
"""

from __future__ import annotations

from cli.output import compact, console, escape, resources, table

HEADLINES = {
    "create": "will create {kind} '{name}'",
    "replace": "will replace the finished {kind} '{name}' with a new one",
    "update": "will update {kind} '{name}'",
    "unchanged": "{kind} '{name}' is up to date: nothing to change",
}
PLAN_WORDS = {"start": "replicas to start", "stop": "replicas to stop", "replace": "replicas to replace"}
SKIPPED_FIELDS = ("type", "name")


def show_plan(result: dict) -> None:
    kind, name, action = result.get("type", "?"), result.get("name", "?"), result.get("action", "?")
    headline = HEADLINES.get(action, action + " {kind} '{name}'").format(kind=kind, name=escape(name))
    console.print(f"[bold]Plan:[/bold] {headline}")
    if action in ("create", "replace"):
        console.print(spec_table(result.get("spec") or {}))
        for line in offer_lines(result.get("plan")):
            console.print(line)
    elif action == "update":
        console.print(changes_table(result.get("changes") or {}))
        for line in plan_lines(result.get("plan")):
            console.print(line)


def spec_table(spec: dict):
    grid = table("FIELD", "VALUE")
    if spec.get("resources"):
        grid.add_row("resources", escape(resources(spec)))
    for field, value in spec.items():
        if field in SKIPPED_FIELDS or field == "resources" or value in (None, [], {}, ""):
            continue
        grid.add_row(field, escape(_value(field, value)))
    return grid


def changes_table(changes: dict):
    grid = table("FIELD", "OLD", "NEW")
    for field, change in changes.items():
        grid.add_row(field, escape(_value(field, change.get("old"))), escape(_value(field, change.get("new"))))
    return grid


def offer_lines(plan: dict | None) -> list[str]:
    """The cheapest offers that fit a new run, as dstack's plan lists them (or why there are none)."""
    plan = plan or {}
    if "offers" not in plan:
        return []
    if not plan["offers"]:
        return ["No offer fits: " + escape("; ".join(plan.get("no_offers") or ["no backend answers"]))]
    lines = [f"Offers ({plan.get('offers_total', len(plan['offers']))} fit; the cheapest first):"]
    for n, offer in enumerate(plan["offers"], 1):
        gpus = offer.get("resources", {}).get("gpus") or []
        gpu = f"{len(gpus)}x{gpus[0].get('name')}" if gpus else "no GPU"
        where = f"{offer['region']}/{offer['availability_zone']}"
        lines.append(f"  {n}. {escape(offer['backend'])} {escape(where)} {escape(offer['instance_type'])} ({gpu}) "
                     f"{'spot' if offer.get('spot') else 'on-demand'} ${offer['price']:g}/h")
    return lines


def plan_lines(plan: dict | None) -> list[str]:
    """'replicas to start: 3, 4' for each non-empty step of a service's update plan."""
    lines = []
    for key, words in PLAN_WORDS.items():
        nums = (plan or {}).get(key) or []
        if nums:
            lines.append(f"{words}: {', '.join(map(str, nums))}")
    return lines


def _value(field: str, value) -> str:
    if field == "env" and isinstance(value, dict):
        return ", ".join(sorted(value)) or "-"
    if field == "commands" and isinstance(value, list):
        return "; ".join(map(str, value))
    if field == "resources" and isinstance(value, dict):
        return resources({"resources": value})
    return compact(value)
