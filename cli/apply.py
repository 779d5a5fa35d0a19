"""``stackyard apply -f FILE``: plan (the server's dry run), confirm, apply, follow.

The file goes to the server as it is written (``{"configuration": <YAML text>}``): the server parses
and validates it, so the CLI never disagrees with it about the format. The CLI adds only what the
server cannot know: the values of the file's valueless ``env`` entries (``- HF_TOKEN``), taken from
the user's shell, as dstack does. A name not set in the shell is left out, and the server's 400 names it.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
import yaml

from cli.client import Client
from cli.errors import EXIT_OK, CliError
from cli.follow import follow_resource, follow_run
from cli.output import console, escape
from cli.plan import show_plan

RUN_TYPES = ("task", "service", "dev-environment")
PAST_TENSE = {"create": "created", "update": "updated", "replace": "replaced"}


def read_configuration(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CliError(f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None


def valueless_env_names(text: str) -> list[str]:
    """The names of the file's ``env`` entries that have no value (``- HF_TOKEN``, or ``HF_TOKEN:``).

    A file the CLI cannot read as YAML gives none: the server's answer then says what is wrong with it."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return []
    env = doc.get("env") if isinstance(doc, dict) else None
    if isinstance(env, list):
        return [item for item in env if isinstance(item, str) and "=" not in item]
    if isinstance(env, dict):
        return [key for key, value in env.items() if isinstance(key, str) and value is None]
    return []


def apply_body(text: str, environ: dict[str, str] | None = None) -> dict:
    """The apply request: the file's text, and the shell's values of its valueless env entries."""
    environ = os.environ if environ is None else environ
    body: dict = {"configuration": text}
    names = valueless_env_names(text)
    if names:
        body["env"] = {name: environ[name] for name in names if name in environ}
    return body


def run_apply(client: Client, path: Path, *, yes: bool, detach: bool, dry_run: bool,
              timeout: float | None) -> int:
    body = apply_body(read_configuration(path))
    plan = client.post("apply/", body, dry_run="true")
    show_plan(plan)
    if dry_run or plan.get("action") == "unchanged":
        return EXIT_OK
    if not yes and not confirm("Apply this plan?"):
        console.print("Cancelled")
        return EXIT_OK
    result = client.post("apply/", body)
    kind, name = result["type"], result["name"]
    # Once applied, Ctrl-C only ever stops the following, even one that comes before it starts.
    try:
        console.print(f"{kind} '{escape(name)}': {PAST_TENSE.get(result['action'], result['action'])}")
        if detach:
            return EXIT_OK
        if kind in RUN_TYPES:
            return follow_run(client, name, timeout=timeout)
        return follow_resource(client, kind, name, timeout=timeout)
    except KeyboardInterrupt:
        console.print(f"Stopped following; {kind} '{escape(name)}' goes on")
        return EXIT_OK


def confirm(question: str) -> bool:
    """A yes/no question; no answer at all (stdin closed) is a no."""
    try:
        return typer.confirm(question, default=False)
    except typer.Abort:
        return False
