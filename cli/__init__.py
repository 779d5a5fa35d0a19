"""``stackyard``: the command-line client of a Stackyard server, in the manner of dstack's CLI.

It talks only to the REST API over HTTP (``cli.client``) and imports no server package, so it can be
installed on a laptop that runs no server at all.
"""
