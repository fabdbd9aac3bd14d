"""The ``dispatcher`` command line (CONTRACT §6).

Exit codes: 0 success, 1 the operation failed (one line on stderr), 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError
from sqlalchemy import exc as sa_exc

from dispatcher import __version__, event_loop
from dispatcher.cli import backends, eventd, flavors, networks, queues, servers, service, top
from dispatcher.cli import reconcile as reconcile_cli
from dispatcher.cli.common import EXIT_FAILED, EXIT_USAGE, CommandError, UsageError
from dispatcher.db.errors import is_transient
from dispatcher.logs import redact, register_settings_secrets, setup_logging
from dispatcher.oneline import one_line
from dispatcher.settings import Settings, load_settings, redact_url

# above CRITICAL: a one-shot command reports its failure in one line of its own
QUIET = logging.CRITICAL + 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dispatcher", description="Keep the cloud database in step with Ganeti clusters."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log to stderr at DISPATCHER_LOG_LEVEL (the daemons always do)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    service.register(sub)
    backends.register(sub)
    flavors.register(sub)
    networks.register(sub)
    servers.register(sub)
    queues.register(sub)
    reconcile_cli.register(sub)
    eventd.register(sub)
    top.register(sub)
    return parser


def _settings_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    name = "DISPATCHER_" + "_".join(str(p) for p in err["loc"]).upper()
    return f"invalid setting {name}: {err['msg']}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.json and not args.json_capable:
        parser.error(f"--json: not an option of {args.command}")
    try:
        settings: Settings = load_settings()
    except ValidationError as exc:
        print(f"dispatcher: {_settings_error(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError) as exc:
        print(f"dispatcher: cannot load settings: {exc}", file=sys.stderr)
        return EXIT_USAGE
    register_settings_secrets(settings)
    if args.long_running or args.verbose:
        setup_logging(settings.log_level, settings.log_format)
    else:
        setup_logging(QUIET, settings.log_format)
    try:
        code: int = event_loop.run(settings, args.handler(args, settings))
        return code
    except UsageError as exc:
        print(f"dispatcher: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandError as exc:
        print(f"dispatcher: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - one line for the operator, never a traceback
        print(f"dispatcher: {_one_line(exc, settings)}", file=sys.stderr)
        return EXIT_FAILED


def _one_line(exc: BaseException, settings: Settings) -> str:
    where = redact_url(settings.database_url.get_secret_value())
    if is_transient(exc):
        return f"database unavailable at {where}: {type(exc).__name__}"
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        # the driver's own words, without SQLAlchemy's statement dump and help link
        orig = exc.orig
        return redact(f"database error at {where}: {one_line(orig, 250)}")
    return redact(one_line(exc, 300))
