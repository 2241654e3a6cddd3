"""`python -m app keys`: API keys from the machine the service runs on, for when no key
exists yet to call the API with (the first operator or admin key of an install).

    python -m app keys create --project NAME --role ROLE [--name NAME] [--expires-days N]
    python -m app keys list [--project NAME]
    python -m app keys revoke KEY_ID

It works on the service's database (P2L_DATABASE_URL, or the SQLite file in P2L_DATA_DIR),
migrated first. ``create`` makes the project when it does not exist and prints the key
once, on stdout alone (``KEY=$(python -m app keys create ...)`` keeps it). Once a key
exists, every /v1 route needs one.
"""

import argparse
import json
import sys
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import make_engine, migrate, session_factory
from app.errors import InvalidInput
from app.models import ApiKey, Role, utcnow
from app.services.access import OPEN, create_key, find_project
from app.services.projects import create_project


def add_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """The ``keys`` command and its subcommands."""
    keys = commands.add_parser(
        "keys", help="create, list or revoke API keys in the service's database"
    )
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key (and its project if new)")
    create.add_argument("--project", default="default", help="project name (default: default)")
    create.add_argument(
        "--role", required=True, choices=[role.value for role in Role], help="the key's role"
    )
    create.add_argument("--name", help="what the key is for (default: <role>-key)")
    create.add_argument("--expires-days", type=positive, help="stop working after this many days")
    listing = actions.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--project", help="only this project's")
    revoke = actions.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("key_id")


def positive(text: str) -> float:
    """A number of days above 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not above 0")
    return value


def run(args: argparse.Namespace, settings: Settings | None = None) -> int:
    """Carry out a ``keys`` command; the exit status."""
    settings = settings or Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.sqlalchemy_url)
    migrate(engine)
    try:
        with session_factory(engine)() as session:
            return _run(session, args)
    finally:
        engine.dispose()


def _run(session: Session, args: argparse.Namespace) -> int:
    if args.action == "create":
        project = find_project(session, args.project)
        if project is None:
            try:
                project = create_project(session, OPEN, args.project)
            except InvalidInput as exc:
                print(exc.detail, file=sys.stderr)
                return 2
        expires = utcnow() + timedelta(days=args.expires_days) if args.expires_days else None
        row, key = create_key(
            session, project, Role(args.role), args.name or f"{args.role}-key", expires
        )
        session.commit()
        print(key)
        print(
            f"created {args.role} key {row.id} ({row.name}) of project {project.name}; "
            "it is shown this once",
            file=sys.stderr,
        )
        return 0
    if args.action == "list":
        query = select(ApiKey).order_by(ApiKey.created_at)
        if args.project:
            project = find_project(session, args.project)
            if project is None:
                print(f"no project {args.project!r}", file=sys.stderr)
                return 1
            query = query.where(ApiKey.project_id == project.id)
        for row in session.scalars(query):
            print(
                json.dumps(
                    {
                        "id": row.id,
                        "project_id": row.project_id,
                        "name": row.name,
                        "role": row.role,
                        "prefix": row.prefix,
                        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
                        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
                    }
                )
            )
        return 0
    revoked = session.get(ApiKey, args.key_id[:32])
    if revoked is None:
        print(f"no key {args.key_id!r}", file=sys.stderr)
        return 1
    revoked.revoked_at = revoked.revoked_at or utcnow()
    session.commit()
    print(f"revoked key {revoked.id} ({revoked.name})", file=sys.stderr)
    return 0
