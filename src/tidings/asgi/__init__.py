"""tidings as an ASGI 3 application, for ASGI servers that run Trio.

Serve the tidings endpoints with hypercorn's trio worker::

    hypercorn --worker-class trio 'tidings.asgi:create_app()'

or next to your own application (Quart-Trio, or any ASGI app) under a prefix::

    from tidings.asgi import create_app, mount
    asgi = mount("/rt", create_app(hub), quart_app)

The endpoints, their behaviour and the sans-IO machines behind them are the
built-in server's (:mod:`tidings.trio`); only the carrier differs.
"""

from tidings.asgi._app import ASGIApp, TidingsASGI, create_app, mount

__all__ = ["ASGIApp", "TidingsASGI", "create_app", "mount"]
