"""Zoo administration: ``python -m app.zoo upgrade | move | export-target``.

``upgrade`` and ``move`` read the same settings as the service (``P2L_*`` environment
variables or ``.env``); ``move`` copies that install to another database and store.
Building the bundled zoo itself is a project tool: ``python -m bench.zoo build``.
"""

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from app.config import Settings
from app.db import make_engine, migrate, session_factory
from app.p2l.scoring import SignatureIndex
from app.store import make_store
from app.zoo.bundled import bundled_target_names, export_target, load_active_reference
from app.zoo.move import move_install
from app.zoo.upgrade import upgrade


def _upgrade(dry_run: bool, as_json: bool) -> None:
    settings = Settings()
    engine = make_engine(settings.sqlalchemy_url)
    migrate(engine)
    store = make_store(settings)
    reference = load_active_reference(settings)
    # This process only writes; a running service rebuilds its index when restarted.
    index = SignatureIndex(eps=settings.p2l_eps)
    with session_factory(engine)() as session:
        report = upgrade(session, store, reference, index, settings.embed_batch_size, dry_run)
    engine.dispose()
    if as_json:
        print(json.dumps(asdict(report), indent=2))
        return
    verb = "would re-sign" if dry_run else "re-signed"
    print(f"active reference network: {report.reference_sha256[:12]}")
    print(f"{verb} {len(report.resigned_datasets)} datasets")
    for row in report.cannot_resign_datasets:
        print(f"  cannot re-sign dataset {row['id']}  {row['name']}  ({row['reason']})")
    print(f"{verb} {len(report.resigned_sources)} sources")
    for row in report.resigned_sources:
        print(f"  {row['id']}  {row['name']}")
    print(f"cannot re-sign {len(report.cannot_resign)} sources (left in the zoo, not ranked):")
    for row in report.cannot_resign:
        print(f"  {row['id']}  {row['name']}  ({row['reason']})")
    verb = "would import" if dry_run else "imported"
    print(f"{verb} {len(report.imported_bundled)} bundled sources")
    if not dry_run and (report.resigned_sources or report.imported_bundled):
        print("restart the service (if it is running) so that it ranks them")


def _move(database_url: str, store_url: str, s3_endpoint_url: str | None) -> None:
    settings = Settings()
    target = settings.model_copy(
        update={"database_url": database_url, "store_url": store_url,
                "s3_endpoint_url": s3_endpoint_url}
    )  # fmt: skip
    source_engine = make_engine(settings.sqlalchemy_url)
    target_engine = make_engine(target.sqlalchemy_url)
    try:
        report = move_install(
            source_engine, make_store(settings), target_engine, make_store(target)
        )
    finally:
        source_engine.dispose()
        target_engine.dispose()
    print(json.dumps(asdict(report), indent=2))
    print(f"done: start the service with P2L_DATABASE_URL={database_url} and "
          f"P2L_STORE_URL={store_url}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m app.zoo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser(
        "upgrade",
        help="re-sign datasets and sources for the active reference network, list what cannot "
        "be re-signed, import the bundled zoo beside what is there",
    )
    up.add_argument("--dry-run", action="store_true", help="only say what would be done")
    up.add_argument("--json", action="store_true", help="print the report as JSON")
    move = sub.add_parser(
        "move",
        help="copy this install (database rows and artifacts) to another database and store, "
        "e.g. from SQLite + local files to PostgreSQL + S3; re-running skips what is there",
    )
    move.add_argument("--database-url", required=True, help="the destination's SQLAlchemy URL")
    move.add_argument("--store-url", required=True, help="file:///path or s3://bucket/prefix")
    move.add_argument("--s3-endpoint-url", help="for an S3-compatible service other than AWS")
    export = sub.add_parser(
        "export-target", help="write a bundled target as a zip (training part) + held-out PNGs"
    )
    export.add_argument("name", help=f"one of: {', '.join(bundled_target_names())}")
    export.add_argument("--out", type=Path, default=Path("demo"))
    args = parser.parse_args(argv)
    if args.command == "upgrade":
        _upgrade(args.dry_run, args.json)
    elif args.command == "move":
        _move(args.database_url, args.store_url, args.s3_endpoint_url)
    else:
        if args.name not in bundled_target_names():
            parser.error(f"no bundled target {args.name!r}; choose one of {bundled_target_names()}")
        archive, heldout = export_target(args.name, args.out)
        print(f"wrote {archive} (training part) and {heldout}/ (test part, for predictions)")


if __name__ == "__main__":
    main()
