"""`python -m app` (or the `p2l-server` script): serve the API with uvicorn on
P2L_HOST:P2L_PORT; `python -m app keys ...`: API keys from the service's machine (see app.keys).
"""

import argparse
import contextlib
import copy
import importlib
import logging
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app import keys
from app.config import Settings

if TYPE_CHECKING:
    import uvicorn

DESCRIPTION = """Serve the P2L transfer-learning service (the API, the web console at /, and a
job worker beside it). Every setting is read from P2L_* environment variables or a .env file
in the working directory (see the configuration reference in docs/); the options below override
the address only. `python -m app` and `p2l-server` are the same command."""

# The installed console script ([project.scripts] in pyproject.toml).
SCRIPT = "p2l-server"
# uvicorn's exit status when the server could not start (uvicorn.main.STARTUP_FAILURE).
STARTUP_FAILURE = 3
# Addresses that mean "every interface": no browser can open them as they are.
WILDCARDS = {"", "0.0.0.0", "::"}

logger = logging.getLogger("p2l")


def program_name() -> str:
    """How the user started us, for the usage line: the console script or the module."""
    return SCRIPT if Path(sys.argv[0]).name == SCRIPT else "python -m app"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: --host and --port override P2L_HOST and P2L_PORT; or ``keys``."""
    parser = argparse.ArgumentParser(prog=program_name(), description=DESCRIPTION)
    parser.add_argument("--host", help="bind address (default: P2L_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: P2L_PORT, 8000)")
    commands = parser.add_subparsers(dest="command", metavar="{keys}")
    keys.add_parser(commands)
    return parser.parse_args(argv)


def log_config() -> dict[str, Any]:
    """uvicorn's logging, and the service's own ``p2l`` loggers at INFO through its handler:
    without this their start-up and retention lines went nowhere (only warnings showed)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["p2l"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def ready_message(host: str, port: int) -> str:
    """The line that says the service is up and where a browser finds it."""
    shown = "127.0.0.1" if host in WILDCARDS else host
    if ":" in shown:  # an IPv6 address goes in brackets in a URL
        shown = f"[{shown}]"
    base = f"http://{shown}:{port}"
    message = f"P2L service ready: console {base}/  API docs {base}/docs"
    if host in WILDCARDS:  # 127.0.0.1 works here; other machines need this one's name
        elsewhere = f"http://{socket.gethostname()}:{port}/"
        message += f"  (bound to {host or '0.0.0.0'}: from elsewhere {elsewhere})"
    return message


def bound_port(server: "uvicorn.Server", configured: int) -> int:
    """The port the server's socket holds (``configured`` may be 0: any free port)."""
    for listener in getattr(server, "servers", []):
        for sock in listener.sockets or ():
            return int(sock.getsockname()[1])
    return configured


def serve(host: str, port: int) -> None:
    """Run uvicorn on ``host``:``port``, logging what the start does and, once the port is
    bound, the console's URL (uvicorn's own line names only the bare address)."""
    import uvicorn  # after parsing: `--help` stays instant

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                logger.info("%s", ready_message(host, bound_port(self, port)))

    # Its constructor configures logging: the lines below go through uvicorn's handler.
    config = uvicorn.Config(
        "app.main:app", host=host, port=port, log_config=log_config(), log_level="info"
    )
    started = time.perf_counter()
    logger.info("Starting the P2L service on %s:%d", host, port)
    # The import (PyTorch, torchvision, FastAPI) is a third of the start: say what it was.
    importlib.import_module("app.main")
    logger.info("loaded the service's code in %.1f s", time.perf_counter() - started)
    server = Server(config)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl+C before the loop handles signals
        server.run()
    if not server.started:  # as uvicorn.run: a failed start is an error exit
        sys.exit(STARTUP_FAILURE)


def main(argv: list[str] | None = None) -> None:
    """Start the service with the settings from the environment (or run ``keys``)."""
    args = parse_args(argv)  # --help exits here, before anything is created on disk
    if args.command == "keys":
        sys.exit(keys.run(args))
    settings = Settings()
    serve(
        settings.host if args.host is None else args.host,
        settings.port if args.port is None else args.port,  # --port 0: any free port
    )


if __name__ == "__main__":
    main()
