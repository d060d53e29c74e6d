"""The Trio server: one listener for SSE, long polling, WebSocket sessions and
publishing over HTTP/1.1 (h11) and HTTP/2 (h2), with routing, limits and drain.

One module per job: ``_serve`` (listening, protocol detection, drain), ``_h11`` and
``_h2`` (the two HTTP adapters), ``_app`` and ``_routes`` (what every handler
shares, routing), one module per endpoint (``_sse_endpoint``, ``_poll_endpoint``,
``_ws_endpoint`` with ``_ws_core``, ``_endpoints`` for publish and health) and their
helpers.  The public names are re-exported here and from :mod:`tidings.trio`.
"""

from tidings.trio.server._serve import (
    Server,
    ServerConfig,
    serve,
    serve_stream,
    server_ssl_context,
)

__all__ = ["Server", "ServerConfig", "serve", "serve_stream", "server_ssl_context"]
