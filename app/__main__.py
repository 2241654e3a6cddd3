"""`python -m app`: serve the API with uvicorn on P2L_HOST:P2L_PORT; `python -m app keys ...`:
API keys from the service's machine (see app.keys)."""

import argparse
import sys

from app import keys
from app.config import Settings

DESCRIPTION = """Serve the P2L transfer-learning service (the API, the web console at /, and a
job worker beside it). Every setting is read from P2L_* environment variables or a .env file
in the working directory (see the README's Configuration table); the options below override
the address only."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: --host and --port override P2L_HOST and P2L_PORT; or ``keys``."""
    parser = argparse.ArgumentParser(prog="python -m app", description=DESCRIPTION)
    parser.add_argument("--host", help="bind address (default: P2L_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: P2L_PORT, 8000)")
    commands = parser.add_subparsers(dest="command", metavar="{keys}")
    keys.add_parser(commands)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Start the service with the settings from the environment (or run ``keys``)."""
    args = parse_args(argv)  # --help exits here, before anything is created on disk
    if args.command == "keys":
        sys.exit(keys.run(args))
    import uvicorn  # after parsing: `--help` stays instant

    settings = Settings()
    uvicorn.run(
        "app.main:app",
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_level="info",
    )


if __name__ == "__main__":
    main()
