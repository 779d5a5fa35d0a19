"""The errors the commands raise and the exit codes they map to (one table, documented in the README).

* 0: the command did what was asked (a run is running or done, a resource active, a prompt declined).
* 1: the run or resource ended badly (failed, terminated by an error) or was not ready in ``--timeout``.
* 2: a usage error: bad option, missing file, no configuration yet (click uses 2 for its own as well).
* 3: the server answered an error (4xx or 5xx); its ``detail`` is printed.
* 4: the server cannot be reached (connection refused, DNS, timeout).
* 130: interrupted with Ctrl-C.
"""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_API_ERROR = 3
EXIT_UNREACHABLE = 4
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """An error the user can act on: printed as one red line (no traceback), then exit with ``exit_code``."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code


class ApiError(CliError):
    """The server answered 4xx/5xx: its ``detail`` (and ``field``, when it names one) is the message."""

    exit_code = EXIT_API_ERROR

    def __init__(self, status: int, detail: str, *, field: str = "", code: str = "", request: str = ""):
        self.status, self.detail, self.field, self.code, self.request = status, detail, field, code, request
        text = f"{detail} (field: {field})" if field and field not in detail else detail
        super().__init__(f"{text} [HTTP {status}{', ' + request if request else ''}]")


class Unreachable(CliError):
    """No answer at all: the message names the URL, which is what the user got wrong most of the time."""

    exit_code = EXIT_UNREACHABLE
