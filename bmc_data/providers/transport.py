"""httpx transports for the SDK clients: no CA bundle for plain-http servers, several connection pools."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any


def plain_http_options(base_url: str) -> dict[str, Any]:
    """httpx client options for `base_url`: a plain-http server (a local vLLM, llama.cpp, tests) needs no
    TLS, so skip loading the CA bundle (~80 ms for every new client, i.e. every event loop)."""
    return {"verify": False} if base_url.startswith("http://") else {}


#: Connections per httpcore pool. A pool walks all of its idle connections (polling each socket) every time
#: a request starts and ends, so one pool costs O(connections) of CPU per request: at 64 in flight that was
#: ~0.5 ms a call on a 2-core VM. Requests are spread over pools of about this many connections instead.
CONNECTIONS_PER_POOL = 8


def http_transport_options(base_url: str, max_concurrency: int, limits: Any) -> dict[str, Any]:
    """Keyword arguments for the SDK's `DefaultAsyncHttpxClient`: `plain_http_options`, plus, when more than
    `CONNECTIONS_PER_POOL` requests may be in flight, a transport that spreads them over several pools
    (each with the SDK's own `limits`; each request goes to the pool with the fewest in flight)."""
    options = plain_http_options(base_url)
    pools = -(-max_concurrency // CONNECTIONS_PER_POOL)
    if pools <= 1:
        return options
    import httpx2

    # one TLS context for all pools: loading the CA bundle costs ~80 ms each time
    verify = httpx2.create_ssl_context(verify=options.get("verify", True))
    transports = [httpx2.AsyncHTTPTransport(verify=verify, limits=limits) for _ in range(pools)]
    return {**options, "transport": _spread_transport_class()(transports)}


@functools.lru_cache(maxsize=None)
def _spread_transport_class() -> type:
    import httpx2  # only here: `import bmc_data` stays light

    class _Release(httpx2.AsyncByteStream):
        """A response body that gives its pool's in-flight count back when closed."""

        def __init__(self, stream: httpx2.AsyncByteStream, load: list[int], index: int):
            self._stream, self._load, self._index = stream, load, index

        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in self._stream:  # type: ignore[attr-defined]
                yield chunk

        async def aclose(self) -> None:
            if self._index >= 0:
                self._load[self._index] -= 1
                self._index = -1
            await self._stream.aclose()  # type: ignore[attr-defined]

    class SpreadTransport(httpx2.AsyncBaseTransport):
        """Sends each request through the least busy of several connection pools (one event loop only)."""

        def __init__(self, transports: list[httpx2.AsyncHTTPTransport]):
            self.transports = transports
            self._load = [0] * len(transports)  # requests in flight per pool, until their body is closed

        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            load = self._load
            index = load.index(min(load))
            load[index] += 1
            try:
                response = await self.transports[index].handle_async_request(request)
            except BaseException:
                load[index] -= 1
                raise
            response.stream = _Release(response.stream, load, index)  # type: ignore[arg-type]
            return response

        async def aclose(self) -> None:
            for transport in self.transports:
                await transport.aclose()

    return SpreadTransport
