"""Run the app under uvicorn: one-line start-up faults, drain on SIGTERM/SIGINT.

Connections get a header timeout and JSON framing errors (`service.http_protocol`) and the
configured keep-alive timeout. On a stop signal the service first turns not-ready and refuses new restore requests (503
`draining`), then uvicorn stops accepting connections and waits up to `DIFFIR_DRAIN_SECONDS`
for accepted requests, which the still-running batchers finish; then the lifespan closes them.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from service.errors import StartupError
from service.settings import load_settings

__all__ = ["load_settings", "main"]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m service", description="Serve DiffIR restoration over HTTP.")
    parser.add_argument("--host", help="bind address (default DIFFIR_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default DIFFIR_PORT or 8000)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="DIFFIR_LOG_LEVEL")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = _parse(argv)
    try:
        settings = load_settings({"host": args.host, "port": args.port, "log_level": args.log_level})
    except StartupError as exc:
        print(f"diffir-serve: {exc}", file=sys.stderr)
        return 2
    import os

    import uvicorn

    from service.settings import unknown_variables

    for note in unknown_variables(dict(os.environ)):
        if "did you mean" in note:  # other DIFFIR_* names belong to tests and tooling
            print(f"diffir-serve: warning: ignoring unknown setting {note}", file=sys.stderr)

    import warnings

    from service.app import create_app
    from service.http_protocol import protocol_with_timeout
    from service.logs import log_event
    from service.state import load_backends

    # torch's weights-only unpickler warns (several lines) before refusing a pickled checkpoint: keep the one line
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\._weights_only_unpickler")
    try:
        backends = load_backends(settings)
    except StartupError as exc:
        print(f"diffir-serve: cannot start: {exc}", file=sys.stderr)
        return 1
    app = create_app(settings, backends=backends)

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            state = getattr(app.state, "service", None)
            if state is not None:
                state.set_draining()
            super().handle_exit(sig, frame)

    # log_config=None: uvicorn keeps the handlers create_app gave its loggers (our JSON lines, service.logs);
    # our RequestContext writes the access lines, so uvicorn's own are off.
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level,
        access_log=False,
        http=protocol_with_timeout(settings.header_timeout_s),
        timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=max(int(settings.drain_seconds), 1),
        lifespan="on",
    )
    server = DrainingServer(config)
    log_event("listening", url=f"http://{settings.host}:{settings.port}")
    server.run()
    return 0
