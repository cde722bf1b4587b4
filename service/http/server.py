"""Run the app under uvicorn: the port first, the models after; one-line start-up faults; drain on SIGTERM.

Order: settings (a bad one: exit 2, one line), the port (taken: exit 1, one line naming host:port),
the checks that take milliseconds (device, model files present: exit 1, one line), then uvicorn
serves (the port answers) while the models load, tune and warm in the background
(`ServiceState.boot`; `/readyz` says what is happening). A start-up that fails there logs
"start-up failed" with the reason and exits 1: it never stays "not ready" forever.

Connections get their budgets from `service.http.http_protocol` (header timeout, header size and
count caps, a cap on open connections; refusals in JSON, counted) and the configured keep-alive
timeout. On a stop signal the service first turns not-ready and refuses new restore requests (503
`draining`), then uvicorn stops accepting connections and waits up to `DIFFIR_DRAIN_SECONDS`
for accepted requests, which the still-running batchers finish; then the lifespan closes them.
"""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any

from service.errors import StartupError
from service.settings import load_settings

__all__ = ["load_settings", "main"]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="diffir-serve",
        description="Serve DiffIR restoration over HTTP (also: python -m service).",
        epilog="Other commands: `diffir-serve restore TASK INPUT... [-o DIR]` restores files and folders without a "
        "server (= diffir-restore; `diffir-serve restore --help`); `diffir-serve prepare --out DIR` builds the "
        "exported graphs ahead of time. Settings: DIFFIR_* environment variables (README: Service settings).",
    )
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

    try:  # before the heavy imports: a taken port is reported in a second
        sock = bind(settings.host, settings.port)
    except OSError as exc:
        print(f"diffir-serve: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    import warnings

    from service.http.app import create_app
    from service.http.http_protocol import ConnectionLimits, protocol_for
    from service.logs import log_event
    from service.state import precheck

    # torch's weights-only unpickler warns (several lines) before refusing a pickled checkpoint: keep the one line
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\._weights_only_unpickler")
    try:
        precheck(settings)
    except StartupError as exc:
        sock.close()
        print(f"diffir-serve: cannot start: {exc}", file=sys.stderr)
        return 1
    exit_status = 0

    def startup_failed(error: str) -> None:  # already logged ("start-up failed"); stop serving, exit 1
        nonlocal exit_status
        exit_status = 1
        server.should_exit = True

    app = create_app(settings, on_startup_failure=startup_failed)

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            state = getattr(app.state, "service", None)
            if state is not None:
                state.set_draining()
            super().handle_exit(sig, frame)

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:  # only now does the port answer
                log_event("listening", url=f"http://{settings.host}:{sock.getsockname()[1]}")

    # log_config=None: uvicorn keeps the handlers create_app gave its loggers (our JSON lines, service.logs);
    # our RequestContext writes the access lines, so uvicorn's own are off.
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level,
        access_log=False,
        http=protocol_for(ConnectionLimits.from_settings(settings), app.state.metrics.connection_refused),
        timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=max(int(settings.drain_seconds), 1),
        lifespan="on",
    )
    server = DrainingServer(config)
    server.run(sockets=[sock])
    return exit_status


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before uvicorn starts (its own bind error names no address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart reuses a TIME_WAIT port
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
