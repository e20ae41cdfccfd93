"""JSON over HTTP to a model server, for the engines whose model another process serves.

A served engine (:mod:`.remote`) speaks its server's API; what every such API shares
lives here, so that another server's engine reuses it: the base URL checked and named
without credentials (they go as HTTP basic auth, an API key as a bearer token), each
request bounded by one timeout for its whole answer, faults (connection refused or reset,
timeouts, 5xx and 429 answers, answers that are not JSON or do not decode, answers the
caller's parser rejects) retried with exponential backoff, and every failure ending in an
:class:`~kad.engines.EngineError` of one line that names the URL.  A 4xx answer or a
redirect fails at once (no retry gets another answer), with the server's own message on
one line and a hint at the likely cause.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

from ..errors import EngineError

_Error = TypeVar("_Error", bound=BaseException)


class Retryable(Exception):
    """A fault worth another attempt (transport error, 5xx, garbled answer); a parser
    raises it for an answer that does not fit the request."""


def check_api_key(api_key: object) -> None:
    """``ValueError`` naming ``api_key`` (never showing it) unless a header can carry it."""
    if api_key is None:
        return
    if not isinstance(api_key, str):
        raise ValueError(f"api_key must be a str, got {type(api_key).__name__}")
    if not (api_key.isascii() and api_key.isprintable()) or any(c.isspace() for c in api_key):
        raise ValueError(f"api_key (its {len(api_key)} characters not shown) must be printable ASCII without spaces "
                         "or line breaks: a key read from a file keeps its newline unless stripped")  # fmt: skip


def checked_url(base_url: str) -> str:
    """``base_url`` without its trailing ``/`` and any ``user:password@`` (which would be
    shown in messages and recorded in results; :class:`JsonClient` sends them as HTTP
    basic auth); ``ValueError`` naming it unless it is an http(s) URL with a host (a typo
    fails at once, not after every retry)."""
    example = "e.g. http://127.0.0.1:8000/v1"
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError) as error:  # named without a password it may hold
        shown = re.sub(r"//[^/@]*@", "//…@", base_url) if isinstance(base_url, str) else base_url
        raise ValueError(f"base URL {shown!r} is not a URL ({error}); {example}") from None
    if url.userinfo:
        url = url.copy_with(username=None, password=None)
        base_url = str(url)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"base URL {base_url!r} must start with http:// or https:// and name a host; {example}")
    if url.port is not None and not 0 < url.port < 65536:
        raise ValueError(f"base URL {base_url!r} has port {url.port}, outside 1..65535")
    if "?" in str(url) or "#" in str(url):  # the API's paths are appended to it: …/v1?x=1/models
        raise ValueError(f"base URL {base_url!r} has a query or fragment: give the API root alone; {example}")
    return base_url.rstrip("/")


class JsonClient:
    """Requests to the API rooted at ``base_url`` (e.g. ``http://127.0.0.1:8000/v1``).

    ``url``: ``base_url`` checked and without credentials (:func:`checked_url`), the name
    every message gives; its ``user:password``, if any, is sent as HTTP basic auth,
    ``api_key`` (:func:`check_api_key`; not both) as a bearer token.  ``timeout`` (s) per
    attempt, for the whole answer; ``attempts`` per request; ``backoff`` (s) before the
    first retry, doubling (the caller checks these numbers, naming its own arguments).
    ``root_404``: the hint for a 404 of a path at the server's root (``root=True``),
    where the API root has answered by then.  ``transport``: an ``httpx`` transport (tests)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        attempts: int = 5,
        backoff: float = 0.5,
        root_404: str = "",
        transport: httpx.BaseTransport | None = None,
    ):
        check_api_key(api_key)
        self.url = checked_url(base_url)  # without credentials: it is shown and recorded
        credentials = httpx.URL(base_url)
        if credentials.userinfo and api_key:
            raise ValueError(f"base URL {self.url!r} has credentials and api_key is given too: give one of them")
        auth = httpx.BasicAuth(credentials.username, credentials.password) if credentials.userinfo else None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout, self.attempts, self.backoff = timeout, attempts, backoff
        self.root_404 = root_404
        self._client = httpx.Client(timeout=timeout, headers=headers, auth=auth, transport=transport)

    def close(self) -> None:
        """Close the connections; a closed client refuses every request."""
        self._client.close()

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        root: bool = False,
        parse: Callable[[Any], Any] | None = None,
        refused: Callable[[str], None] | None = None,
    ) -> tuple[Any, float]:
        """The JSON answer of one request, through ``parse`` if given (which raises
        :class:`Retryable` for an answer that does not fit), and the seconds from the
        first attempt to it; retried on faults, :class:`EngineError` at last.  ``path``
        follows the API root, or the server's root with ``root`` (the API root less its
        ``/v1``).  ``refused``: called with the message of a 4xx answer before it fails,
        to raise an exception of the caller's for a refusal the caller can act on."""
        url = (_root(self.url) if root else self.url) + path
        if self._client.is_closed:
            raise EngineError(f"{url}: the engine is closed (close() closed its connections)")
        reason = ""
        start = time.perf_counter()
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self._answer(method, url, body)
                if response.status_code >= 500 or response.status_code == 429:
                    raise Retryable(f"HTTP {response.status_code}")
                if response.status_code >= 400:
                    self._refuse(response, url, root, refused)
                if response.is_redirect:  # http -> https, a moved API: no retry gets another answer
                    where = response.headers.get("Location", "elsewhere")
                    raise EngineError(f"{url}: HTTP {response.status_code}, a redirect to {where}: give the base URL "
                                      "it names")  # fmt: skip
                try:
                    answer = response.json()
                except (json.JSONDecodeError, UnicodeDecodeError) as error:
                    raise Retryable(f"an answer that is not JSON ({error.msg if hasattr(error, 'msg') else error})")
                return (answer if parse is None else parse(answer)), time.perf_counter() - start
            except httpx.TimeoutException:
                reason = f"no whole answer within timeout={self.timeout} s"
            except httpx.LocalProtocolError as error:  # a request this client cannot send: no retry sends it
                raise EngineError(f"{url}: cannot send the request: {error}") from None
            except httpx.ConnectError as error:
                if _tls_failure(error):  # https to an http server, a certificate not trusted: no retry helps
                    raise EngineError(f"{url}: TLS failed ({error}); a server without TLS is reached by http://") from None
                if _unknown_host(error):  # a typo in the host: DNS gives the same answer to every retry
                    raise EngineError(f"{url}: no such host {_looked_up(url)} ({error}); check the host name") from None
                reason = f"ConnectError: {error}"
            except httpx.RequestError as error:  # transport faults, and bodies that do not decode
                reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            except Retryable as error:
                reason = str(error)
        raise EngineError(f"{url}: {reason} (after {self.attempts} attempts)")

    def _answer(self, method: str, url: str, body: dict[str, Any] | None) -> httpx.Response:
        """The response with its whole body read within :attr:`timeout` of sending: httpx's
        own timeouts bound each read, not their sum."""
        deadline = time.perf_counter() + self.timeout
        with self._client.stream(method, url, json=body) as response:
            content = bytearray()
            for chunk in response.iter_raw():
                content += chunk
                if time.perf_counter() > deadline:
                    raise httpx.ReadTimeout(f"no whole answer within {self.timeout} s")
        # A response of the bytes read, decoded (Content-Encoding) as httpx would.
        return httpx.Response(response.status_code, headers=response.headers, content=bytes(content),
                              request=response.request)  # fmt: skip

    def _refuse(
        self, response: httpx.Response, url: str, root: bool, refused: Callable[[str], None] | None
    ) -> None:
        """A 4xx answer: ``refused``'s exception if it raises one, else a one-line error.
        ``root``: the path lives at the server's root, beside the API root."""
        message = error_message(response) or " ".join(response.text.split())[:200]  # an HTML page: one line
        if refused is not None:
            refused(message)
        hint = _HINTS.get(response.status_code, "")
        if response.status_code == 404 and root:
            hint = self.root_404
        if response.status_code == 401 and "authorization" in response.request.headers:
            hint = _HINTS[403]  # a key (or user:password) was sent: it is the one refused
        raise EngineError(f"{url}: HTTP {response.status_code}: {message}{hint}")


def error_message(answer: Any) -> str | None:
    """The message of an OpenAI-style error answer ``{"error": {"message": ...}}`` (a
    response or its JSON), on one line; None for any other answer."""
    try:
        if isinstance(answer, httpx.Response):
            answer = answer.json()
        error = answer["error"]
        message = error["message"] if isinstance(error, dict) else error
    except (ValueError, KeyError, TypeError, IndexError):
        return None
    return " ".join(str(message).split())[:200] or None


# What a 4xx answer to kad's requests most likely means.
_HINTS = {
    401: " (the server wants an API key: --api-key, api_key=)",
    403: " (the server refuses this API key: --api-key, api_key=)",
    404: " (the base URL names the API root, e.g. http://HOST:8000/v1)",
}

# A connection closed during the handshake (a port forward or load balancer whose server is
# still starting) may succeed on a retry; other TLS errors (no TLS there, an untrusted
# certificate) will not.
_PASSING_TLS_ERRORS = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def _tls_failure(error: BaseException) -> bool:
    """Whether ``error`` comes from a TLS handshake that no retry would pass."""
    handshake = _first_cause(error, ssl.SSLError)
    return handshake is not None and not isinstance(handshake, _PASSING_TLS_ERRORS)


# getaddrinfo's answers that a retry will not change (EAI_AGAIN, a resolver that did not
# answer, is retried).  EAI_NODATA is glibc's only.
_UNKNOWN_HOST = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


def _unknown_host(error: BaseException) -> bool:
    """Whether ``error`` comes from a name lookup that found no such host."""
    lookup = _first_cause(error, socket.gaierror)
    return lookup is not None and lookup.errno in _UNKNOWN_HOST


def _looked_up(url: str) -> str:
    """The host whose lookup failed: the URL's, or the proxy's where the environment names
    one for its scheme (httpx reads HTTP_PROXY, HTTPS_PROXY, ALL_PROXY)."""
    parsed, proxies = httpx.URL(url), urllib.request.getproxies()
    proxy = proxies.get(parsed.scheme) or proxies.get("all")
    return f"{parsed.host!r} or the proxy {proxy!r} from the environment" if proxy else repr(parsed.host)


def _first_cause(error: BaseException, kind: type[_Error]) -> _Error | None:
    """The first exception of ``kind`` in ``error``'s chain (httpx wraps httpcore's, which wraps the socket's)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _root(url: str) -> str:
    """The server's root (vLLM's /tokenize lives there, beside /v1)."""
    return url[: -len("/v1")] if url.endswith("/v1") else url
