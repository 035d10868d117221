"""`sentinel-cp`: serve, migrate, verify the audit chain."""

from __future__ import annotations

import argparse
import json
import sys

from sentinel_cp.config import ConfigError, load_settings


def _app():  # type: ignore[no-untyped-def]
    from app import create_app

    return create_app()


def cmd_serve(_args: argparse.Namespace) -> int:
    from sentinel_cp.server import serve

    serve(load_settings())
    return 0


def cmd_setup(_args: argparse.Namespace) -> int:
    """Migrate to head and create the first admin and project (what `web` does at start)."""
    from sentinel_cp.server import prepare_database

    prepare_database(_app())
    return 0


def cmd_migrate(_args: argparse.Namespace) -> int:
    from flask_migrate import upgrade

    app = _app()
    with app.app_context():
        upgrade()
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Exit 0 when the chain holds, 1 when it does not (the JSON verdict names the row)."""
    from sentinel_cp import audit, projects

    app = _app()
    with app.app_context():
        project_id = projects.get_project(args.project).id if args.project else None
        verdict = audit.verify_chain(project_id)
    print(json.dumps({"chain": args.project or "global", **verdict.to_dict()}))
    return 0 if verdict.valid else 1


def cmd_create_user(args: argparse.Namespace) -> int:
    """Create a user from the shell (audited as `cli`); the password is read from stdin."""
    from sentinel_cp import accounts
    from sentinel_cp.audit import Actor
    from sentinel_cp.db import db

    password = sys.stdin.readline().rstrip("\n")
    app = _app()
    with app.app_context():
        user = accounts.create_user(
            Actor.system("cli"), email=args.email, password=password, role=args.role
        )
        db.session.commit()
        print(json.dumps(user.to_dict()))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate KDL files as the proxy's `sentinel test -c` would; exit 0 valid, 1 invalid.

    The first file is the entry point; the others are what its `include`s may name (paths
    relative to the entry file's directory). Needs no database or Redis.
    """
    from pathlib import Path

    from sentinel_cp.bundles.kdl import validate_bundle

    paths = [Path(p) for p in args.files]
    base = paths[0].resolve().parent
    files: dict[str, str] = {}
    for path in paths:
        resolved = path.resolve()
        try:
            name = str(resolved.relative_to(base))
        except ValueError:
            print(f"sentinel-cp: {path} is outside {base}", file=sys.stderr)
            return 2
        try:
            files[name] = resolved.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            print(f"sentinel-cp: cannot read {path}: {exc}", file=sys.stderr)
            return 2
    binary = None
    if args.external:
        binary = load_settings().sentinel_binary
    result = validate_bundle(files, entry=str(paths[0].resolve().relative_to(base)), binary=binary)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(result.report)
    return 0 if result.valid else 1


def cmd_gc(args: argparse.Namespace) -> int:
    """Delete unreferenced old bundle artifacts (or, with --dry-run, list them)."""
    from sentinel_cp.bundles import gc

    app = _app()
    with app.app_context():
        result = gc.collect(dry_run=args.dry_run)
    print(json.dumps(result, indent=2))
    return 0


def cmd_openapi(_args: argparse.Namespace) -> int:
    """Print the OpenAPI document (docs/openapi.json is this output, checked by a test)."""
    from blueprints.openapi import build_document

    print(json.dumps(build_document(_app()), indent=2, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sentinel-cp", description="Sentinel control plane")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the web process (embedded system without REDIS_URL)")
    commands.add_parser("migrate", help="upgrade the database schema to the latest revision")
    commands.add_parser("setup", help="migrate, then create the first admin and project")
    commands.add_parser("openapi", help="print the OpenAPI document")
    validate = commands.add_parser("validate", help="validate proxy KDL files (no server needed)")
    validate.add_argument("files", nargs="+", help="entry file first, then included files")
    validate.add_argument("--json", action="store_true", help="print the result as JSON")
    validate.add_argument(
        "--external", action="store_true", help="also run $SENTINEL_BINARY test -c"
    )
    from agent import simulator

    simulator.add_cli(commands)
    from sentinel_cp import demo

    demo.add_cli(commands)
    create_user = commands.add_parser("create-user", help="create a user; password on stdin")
    create_user.add_argument("--email", required=True)
    create_user.add_argument("--role", choices=("admin", "operator", "reader"), default="reader")
    gc_parser = commands.add_parser("gc", help="garbage-collect old bundle artifacts")
    gc_parser.add_argument("--dry-run", action="store_true", help="list what would be deleted")
    audit_parser = commands.add_parser("audit", help="audit log tools")
    audit_commands = audit_parser.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser("verify", help="verify a hash chain")
    verify.add_argument("--project", help="project slug (default: the global chain)")
    args = parser.parse_args(argv)

    handlers = {
        "serve": cmd_serve,
        "migrate": cmd_migrate,
        "setup": cmd_setup,
        "openapi": cmd_openapi,
        "create-user": cmd_create_user,
        "validate": cmd_validate,
        "simulate": simulator.cli_main,
        "demo": demo.cli_main,
        "audit": cmd_audit_verify,
        "gc": cmd_gc,
    }
    try:
        code = handlers[args.command](args)
    except ConfigError as exc:
        print(f"sentinel-cp: configuration error: {exc}", file=sys.stderr)
        code = 2
    except Exception as exc:
        from sentinel_cp.errors import DomainError

        if not isinstance(exc, DomainError):
            raise
        print(f"sentinel-cp: {exc.message}", file=sys.stderr)
        code = 1
    raise SystemExit(code)


if __name__ == "__main__":
    main()
