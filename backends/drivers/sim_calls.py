"""Plumbing shared by the sim driver's modules (``sim`` and ``sim_volumes``): provider-style ids and
the wrapper every simulated API call goes through. It imports neither, so both can import it."""

from __future__ import annotations

import functools
import uuid


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:17]}"


def _sim_call(method):
    """Give a driver call the configured latency and the ``api_errors`` fault, before it acts."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        self._enter_call()
        return method(self, *args, **kwargs)

    return wrapper
