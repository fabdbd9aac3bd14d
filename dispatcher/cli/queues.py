"""``dispatcher queue inspect|retry``: the dead-letter queues."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

import aio_pika

from dispatcher.cli.common import CommandError, UsageError, command, emit_json
from dispatcher.pipeline import deadletter
from dispatcher.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    queue = sub.add_parser("queue", help="dead-letter queues").add_subparsers(
        dest="action", required=True
    )
    p = queue.add_parser("inspect", help="list a queue's dead letters without removing them")
    p.add_argument("queue", help="the live queue's name, e.g. snf-events-op")
    p.add_argument("--limit", type=int, default=None)
    command(p, inspect)
    p = queue.add_parser("retry", help="re-publish dead letters to where they came from")
    p.add_argument("queue", nargs="?")
    command(p, retry)


@contextlib.contextmanager
def _exit_codes() -> Iterator[None]:
    """A queue name that is not ours is bad input; a missing queue or broker is a failure."""
    try:
        yield
    except deadletter.UnknownQueue as exc:
        raise UsageError(str(exc)) from None
    except deadletter.MissingQueue as exc:
        raise CommandError(str(exc)) from None
    except (ConnectionError, aio_pika.exceptions.AMQPError) as exc:
        raise CommandError(f"broker unavailable: {type(exc).__name__}: {exc}") from None


async def inspect(args: argparse.Namespace, settings: Settings) -> int:
    with _exit_codes():
        letters = await deadletter.inspect(settings, args.queue, args.limit)
    if args.json:
        emit_json([d.as_dict() for d in letters])
        return 0
    # a block per letter: reasons and bodies are long, and the body is shown whole
    for i, d in enumerate(letters):
        print(f"#{i}  failed_at {d.failed_at or '-'}  from {d.exchange} {d.routing_key}")
        print(f"  reason: {d.reason or '-'}")
        print(f"  body ({d.body_encoding}): {d.body}")
    print(f"{len(letters)} dead letter(s)")
    return 0


async def retry(args: argparse.Namespace, settings: Settings) -> int:
    with _exit_codes():
        counts = await deadletter.retry(settings, args.queue)
    if args.json:
        emit_json({"retried": counts})
    else:
        for queue, n in counts.items():
            print(f"{queue}: {n} re-published")
    return 0
