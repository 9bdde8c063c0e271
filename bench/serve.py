"""``python -m bench.serve {ours,peers,bare} --ini X --port P --threads T [--counters]``:
one bench target under waitress.  ``ours`` is the demo exactly as ``pserve``
builds it (``demo_app:main``); with ``--counters`` it is wrapped to add
``/_bench/counters`` (used by the stampede scenario only).  ``bare`` is
:mod:`bench.bare` (``--response FILE``: the demo's response it replays; no .ini)."""
from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("app", choices=("ours", "peers", "bare"))
    parser.add_argument("--ini", default=None)
    parser.add_argument("--response", default=None, help="bare: the saved response (JSON)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--counters", action="store_true")
    parser.add_argument("--reuse-port", action="store_true",
                        help="listen with SO_REUSEPORT (N processes on one port: bench scaling)")
    args = parser.parse_args()
    if args.app == "bare":
        from .bare import make_app as make_bare

        _serve(make_bare(args.response), args.port, args.threads, args.reuse_port)
        return

    from pyramid.paster import get_appsettings, setup_logging

    setup_logging(args.ini)
    settings = dict(get_appsettings(args.ini))
    if args.app == "peers":
        from .peers.app import make_app

        app = make_app(settings)
    elif args.counters:
        from demo_app import make_config

        from . import counters

        config = make_config(settings)
        counters.include(config)
        app = config.make_wsgi_app()
        config.registry["bench.wrap_relay"](config.registry)
    else:
        from demo_app import main as demo_main

        app = demo_main({}, **settings)
    _serve(app, args.port, args.threads, args.reuse_port)


def _serve(app, port: int, threads: int, reuse_port: bool = False) -> None:
    import waitress

    options = dict(threads=threads, connection_limit=1000, channel_timeout=120, ident=None)
    if reuse_port:  # the kernel spreads new connections over the processes sharing the port
        import socket

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        waitress.serve(app, sockets=[sock], **options)
    else:
        waitress.serve(app, host="127.0.0.1", port=port, **options)


if __name__ == "__main__":
    main()
