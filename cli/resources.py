"""``stackyard fleet|volume|backend list|delete NAME``: one sub-command group per kind of resource.

Alone (``stackyard fleet``) a group lists, as ``dstack fleet`` does.
"""

from collections.abc import Callable
from typing import Annotated
from urllib.parse import quote

import typer
from rich.table import Table

from cli.apply import confirm
from cli.client import connect
from cli.errors import EXIT_OK
from cli.output import console, escape, styled
from cli.tables import backends_table, fleets_table, volumes_table

# What a delete does, in the words of the question asked before it.
DELETE_WORDS = {
    "fleet": "Terminate fleet '{name}' and its instances?",
    "volume": "Delete volume '{name}' (and its data)?",
    "backend": "Delete backend '{name}'?",
}


def resource_app(kind: str, path: str, make_table: Callable[[list[dict]], Table]) -> typer.Typer:
    app = typer.Typer(help=f"List or delete {kind}s.", no_args_is_help=False)

    @app.callback(invoke_without_command=True)
    def default(ctx: typer.Context) -> None:
        if ctx.invoked_subcommand is None:
            list_resources()

    @app.command("list")
    def list_resources() -> None:
        """List them."""
        client = connect()
        console.print(make_table(client.list(f"{path}/")))

    @app.command("delete")
    def delete_resource(name: Annotated[str, typer.Argument(help=f"the {kind}'s name")],
                        yes: Annotated[bool, typer.Option("-y", "--yes", help="do not ask")] = False) -> None:
        """Delete one (asks first unless -y)."""
        client = connect()
        client.get_named(kind, path, name)  # a wrong name is said before any question
        if not yes and not confirm(DELETE_WORDS[kind].format(name=name)):
            console.print("Cancelled")
            raise typer.Exit(EXIT_OK)
        answer = client.delete(f"{path}/{quote(name, safe='')}/")
        status = answer.get("status") if isinstance(answer, dict) else "deleted"
        console.print(f"{kind} '{escape(name)}': {styled(status)}")

    return app


fleet_app = resource_app("fleet", "fleets", fleets_table)
volume_app = resource_app("volume", "volumes", volumes_table)
backend_app = resource_app("backend", "backends", backends_table)
