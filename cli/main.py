"""The ``stackyard`` command (typer): the commands dstack users know, over the Stackyard REST API.

Every command's errors go through ``Group.invoke``: a ``CliError`` (the server's ``detail``, an
unreachable URL, a usage mistake) is one red line and its exit code (``cli.errors``), never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import urlparse

import typer
from typer.core import TyperGroup

from cli import apply, events, runs
from cli.client import connect
from cli.config import Config, config_path, read_config, save_config
from cli.errors import EXIT_INTERRUPTED, EXIT_OK, CliError
from cli.output import console, err_console, error, escape
from cli.resources import backend_app, fleet_app, volume_app


class Group(TyperGroup):
    """The root command group: turns the CLI's errors into a red line and an exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CliError as exc:
            error(exc.message)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("Interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None


Yes = Annotated[bool, typer.Option("-y", "--yes", help="do not ask")]
RunName = Annotated[str, typer.Argument(help="the run's name")]
# Tests (and scripts) stop a watch after N refreshes instead of Ctrl-C.
WatchIterations = Annotated[int | None, typer.Option("--watch-iterations", hidden=True)]

app = typer.Typer(cls=Group, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="Stackyard's command line: apply dstack configurations, follow runs, manage resources.")
app.add_typer(fleet_app, name="fleet")
app.add_typer(volume_app, name="volume")
app.add_typer(backend_app, name="backend")


@app.command("config")
def config_command(
    url: Annotated[str | None, typer.Option(help="the server, e.g. http://127.0.0.1:8000")] = None,
    token: Annotated[str | None, typer.Option(help="your API token")] = None,
    project: Annotated[str | None, typer.Option(help="the project the commands act on (default: main)")] = None,
) -> None:
    """Save the server, token and project (~/.stackyard/config.yml, or $STACKYARD_CLI_CONFIG); alone, show them."""
    current = read_config()
    if url is None and token is None and project is None:
        if current is None:
            raise CliError(f"no configuration in {config_path()}: give --url, --token and --project")
        masked = (current.token[:4] + "…") if current.token else "-"
        console.print(f"url: {escape(current.url)}\ntoken: {masked}\nproject: {escape(current.project)}\n"
                      f"file: {config_path()}")
        return
    current = current or Config()
    new = Config(url=(url or current.url).rstrip("/"), token=token or current.token,
                 project=project or current.project)
    if urlparse(new.url).scheme not in ("http", "https") or not urlparse(new.url).netloc:
        raise CliError(f"--url: expected an http:// or https:// address, got {new.url!r}")
    if not new.token:
        raise CliError("--token: give your API token (printed by `manage.py runstack`, or made in the admin)")
    path = save_config(new)
    console.print(f"Saved to {path}: {escape(new.url)}, project '{escape(new.project)}'")


@app.command("apply")
def apply_command(
    file: Annotated[Path, typer.Option("-f", "--file", help="the configuration file (YAML)")],
    yes: Annotated[bool, typer.Option("-y", "--yes", help="apply without asking")] = False,
    detach: Annotated[bool, typer.Option("-d", "--detach", help="do not follow the progress")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show the plan only, change nothing")] = False,
    timeout: Annotated[float | None, typer.Option(help="stop following after this many seconds (exit 1)")] = None,
) -> None:
    """Create or update the fleet, volume or run a configuration file describes, then follow it."""
    raise typer.Exit(apply.run_apply(connect(), file, yes=yes, detach=detach, dry_run=dry_run, timeout=timeout))


@app.command("ps")
def ps_command(
    all_runs: Annotated[bool, typer.Option("-a", "--all", help="also the finished runs")] = False,
    watch: Annotated[bool, typer.Option("-w", "--watch", help="refresh every 2 s until Ctrl-C")] = False,
    watch_iterations: WatchIterations = None,
) -> None:
    """List the active runs (-a: all of them)."""
    raise typer.Exit(runs.show_runs(connect(), all_runs=all_runs, watch=watch, iterations=watch_iterations))


@app.command("stop")
def stop_command(
    name: RunName,
    abort: Annotated[bool, typer.Option("-x", "--abort", help="abort: force the volumes' detach at once")] = False,
    yes: Yes = False,
) -> None:
    """Stop a run (asks first unless -y)."""
    client = connect()
    runs.get_run(client, name)  # a wrong name is said before any question
    if not yes and not apply.confirm(f"{'Abort' if abort else 'Stop'} run '{name}'?"):
        console.print("Cancelled")
        raise typer.Exit(EXIT_OK)
    runs.stop_run(client, name, abort=abort)


@app.command("logs")
def logs_command(
    name: RunName,
    follow: Annotated[bool, typer.Option("-f", "--follow", help="then print new lines until the job ends")] = False,
    job: Annotated[str | None, typer.Option(help="a job of the run, e.g. train-0-1 (default: its first)")] = None,
) -> None:
    """Print a run's output."""
    client = connect()
    runs.get_run(client, name)  # a wrong name is said as such, not as a bare 404
    raise typer.Exit(runs.print_logs(client, name, job=job, follow=follow))


@app.command("event")
def event_command(
    watch: Annotated[bool, typer.Option("-w", "--watch", help="then print new events until Ctrl-C")] = False,
    resource_type: Annotated[str | None, typer.Option("--type", help="only this kind of resource: run, ...")] = None,
    resource_name: Annotated[str | None, typer.Option("--name", help="only the resource of this name")] = None,
    watch_iterations: WatchIterations = None,
) -> None:
    """Show the project's recent events, oldest first."""
    raise typer.Exit(events.show_events(connect(), watch=watch, iterations=watch_iterations,
                                        resource_type=resource_type, resource_name=resource_name))


def main() -> None:
    app(prog_name="stackyard")
