"""``python -m cli``: the same as the ``stackyard`` command."""

from cli.main import main

main()
