"""A small HTTP client for the Stackyard API: token auth, one project, errors turned into ``CliError``.

Every failure becomes an ``ApiError`` carrying the server's ``detail`` (the API's one error shape,
``{"code", "detail", "field"?}``) or an ``Unreachable`` naming the URL, so no command ever shows a
traceback for something that went wrong on the wire.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import httpx

from cli.config import Config, load_config
from cli.errors import ApiError, Unreachable

TIMEOUT_SECONDS = 30.0
PAGE_SIZE = 500  # the API's largest page: one request for every list a terminal can show


class Client:
    """Requests to one server and one project; paths are relative to ``/api/v1/projects/{project}/``."""

    def __init__(self, config: Config, *, timeout: float = TIMEOUT_SECONDS):
        self.url = config.url.rstrip("/")
        self.project = config.project
        self._http = httpx.Client(base_url=self.url, timeout=timeout,
                                  headers={"Authorization": f"Token {config.token}", "Accept": "application/json"})

    def close(self) -> None:
        self._http.close()

    def project_path(self, path: str) -> str:
        return f"/api/v1/projects/{quote(self.project, safe='')}/{path.lstrip('/')}"

    def get(self, path: str, **params) -> dict | list:
        return self._json("GET", self.project_path(path), params=_clean(params))

    def post(self, path: str, body: dict | None = None, **params) -> dict | list | None:
        return self._json("POST", self.project_path(path), json=body or {}, params=_clean(params))

    def delete(self, path: str) -> dict | None:
        return self._json("DELETE", self.project_path(path))

    def get_named(self, kind: str, path: str, name: str) -> dict:
        """One resource by name; a 404 says which name was not found in which project."""
        try:
            return self.get(f"{path}/{quote(name, safe='')}/")
        except ApiError as exc:
            if exc.status != 404:
                raise
            raise ApiError(404, f"no {kind} named '{name}' in project '{self.project}'", request=exc.request) from None

    def list(self, path: str, **params) -> list[dict]:
        """The first page (up to PAGE_SIZE rows) of a paginated list."""
        return self.get(path, page_size=PAGE_SIZE, **params)["results"]

    @contextmanager
    def stream_lines(self, path: str, **params) -> Iterator[Iterator[str]]:
        """The lines of a streamed text answer (``logs?follow=true``), read with no read timeout."""
        url = self.project_path(path)
        with self._errors("GET", url):
            timeout = httpx.Timeout(TIMEOUT_SECONDS, read=None)
            with self._http.stream("GET", url, params=_clean(params), timeout=timeout) as response:
                if response.is_error:
                    response.read()
                    raise _api_error(response, "GET", url)
                yield _lines(response, url)

    def _json(self, method: str, url: str, **kwargs):
        with self._errors(method, url):
            response = self._http.request(method, url, **kwargs)
        if response.is_error:
            raise _api_error(response, method, url)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiError(response.status_code, f"the server answered something that is not JSON: "
                                                 f"{response.text[:200]!r}", request=f"{method} {url}") from None

    @contextmanager
    def _errors(self, method: str, url: str):
        try:
            yield
        except httpx.ConnectError as exc:
            raise Unreachable(f"cannot reach {self.url}: {_reason(exc)} (is the server running? "
                              "check the URL with `stackyard config`)") from None
        except httpx.TimeoutException:
            raise Unreachable(f"cannot reach {self.url}: no answer to {method} {url} within the timeout") from None
        except httpx.HTTPError as exc:
            raise Unreachable(f"cannot reach {self.url}: {_reason(exc)}") from None


def _lines(response: httpx.Response, url: str) -> Iterator[str]:
    try:
        yield from response.iter_lines()
    except httpx.HTTPError:
        return  # the stream was cut (the server's cap, a restart): the caller asks again


def _api_error(response: httpx.Response, method: str, url: str) -> ApiError:
    request = f"{method} {url}"
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict) or "detail" not in data:
        text = response.text.strip()[:300] or response.reason_phrase
        return ApiError(response.status_code, text, request=request)
    return ApiError(response.status_code, str(data["detail"]), field=str(data.get("field") or ""),
                    code=str(data.get("code") or ""), request=request)


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


def _clean(params: dict) -> dict:
    return {key: value for key, value in params.items() if value is not None}


def connect() -> Client:
    """A client for the configured server (a usage error saying what to run when there is none)."""
    return Client(load_config())
