"""The Ganeti-side producers: ``eventd`` (on the master) and ``progress-monitor`` (wrapping
the OS installer's image reader on the primary node)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import ValidationError

from dispatcher.cli.common import CommandError, UsageError, command
from dispatcher.core.messages import Name
from dispatcher.eventd.config import load_eventd_settings, rapi_client
from dispatcher.eventd.master import MasterCheck, local_names, read_ssconf
from dispatcher.eventd.nics import RapiNicReader
from dispatcher.eventd.progress_monitor import monitor
from dispatcher.eventd.publisher import Publisher
from dispatcher.eventd.service import EventdFailed, EventdOptions, run_eventd
from dispatcher.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "eventd",
        help="publish Ganeti job events to the broker (runs on the Ganeti master)",
        description="Watch Ganeti's job queue directory and publish ganeti-op-status and "
        "ganeti-network-status messages. Settings: DISPATCHER_AMQP_URL, "
        "DISPATCHER_GANETI_QUEUE_DIR, DISPATCHER_GANETI_DATA_DIR, DISPATCHER_HTTP_LISTEN and "
        "DISPATCHER_EVENTD_* (see the README).",
    )
    p.add_argument("--queue-dir", type=Path, help="Ganeti's job queue directory")
    p.add_argument("--data-dir", type=Path, help="Ganeti's data directory (ssconf_* files)")
    p.add_argument("--cluster", help="cluster name for the messages (default: ssconf)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--node-name", help="this node's Ganeti name (default: its FQDN)")
    who.add_argument(
        "--no-master-check",
        action="store_true",
        help="publish even when ssconf names another node as master",
    )
    p.add_argument(
        "--nic-source",
        choices=("rapi", "none"),
        help="where instance_nics come from (default: DISPATCHER_EVENTD_NIC_SOURCE or rapi)",
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="publish the current status of every job in the queue, wait for the confirms, exit",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="with --once: seconds to wait for the broker (default 60)",
    )
    command(p, eventd, json_flag=False, long_running=True)

    p = sub.add_parser(
        "progress-monitor",
        help="run COMMAND and publish its read progress as ganeti-create-progress",
        usage="%(prog)s -i INSTANCE -r BYTES [-w BYTES] [--interval S] -- COMMAND...",
    )
    p.add_argument("-i", "--instance", required=True, help="the instance being created")
    p.add_argument(
        "-r", "--read-bytes", type=int, required=True, help="bytes COMMAND will read (100%%)"
    )
    p.add_argument("-w", "--write-bytes", type=int, help="bytes COMMAND will write (wprogress)")
    p.add_argument("--interval", type=float, default=3.0, help="seconds between samples")
    p.add_argument(
        "--publish-timeout",
        type=float,
        default=5.0,
        help="seconds to wait at exit for the broker's confirms (default 5)",
    )
    p.add_argument("cmd", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    command(p, progress_monitor, json_flag=False, long_running=True)


async def eventd(args: argparse.Namespace, settings: Settings) -> int:
    try:
        cfg = load_eventd_settings()
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        name = "DISPATCHER_EVENTD_" + "_".join(str(p) for p in err["loc"]).upper()
        raise UsageError(f"invalid setting {name}: {err['msg']}") from None
    queue_dir: Path = args.queue_dir or settings.ganeti_queue_dir
    data_dir: Path = args.data_dir or settings.ganeti_data_dir
    cluster = args.cluster or cfg.cluster or read_ssconf(data_dir, "cluster_name")
    if not cluster:
        raise UsageError(
            f"cluster name unknown: {data_dir}/ssconf_cluster_name is not readable; "
            "give --cluster (or DISPATCHER_EVENTD_CLUSTER)"
        )
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    master = None
    if cfg.master_check and not args.no_master_check:
        master = MasterCheck(data_dir, local_names(args.node_name or cfg.node_name))
    nics = None
    if (args.nic_source or cfg.nic_source) == "rapi":
        try:
            nics = RapiNicReader(rapi_client(cfg, data_dir), timeout=cfg.rapi_timeout)
        except (ValueError, OSError) as exc:
            raise UsageError(f"RAPI settings for NIC lookups: {exc}") from None
    opts = EventdOptions(
        queue_dir=queue_dir,
        cluster=cluster,
        master=master,
        nics=nics,
        buffer_size=cfg.buffer_size,
        dedupe_jobs=cfg.dedupe_jobs,
        dedupe_ttl=cfg.dedupe_ttl,
        master_poll=cfg.master_poll,
        heartbeat_interval=cfg.heartbeat_interval,
        node_name=args.node_name or cfg.node_name,
        once=args.once,
        once_timeout=args.timeout,
        http_listen=settings.http_listen,
        shutdown_grace=settings.shutdown_grace,
        amqp_urls=settings.amqp_urls,
    )
    try:
        return await run_eventd(opts)
    except EventdFailed as exc:
        raise CommandError(str(exc)) from None


async def progress_monitor(args: argparse.Namespace, settings: Settings) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise UsageError("no COMMAND given (progress-monitor -i INSTANCE -r BYTES -- COMMAND...)")
    if args.read_bytes <= 0 or (args.write_bytes is not None and args.write_bytes <= 0):
        raise UsageError("-r/-w BYTES must be positive")
    if args.interval <= 0 or args.publish_timeout < 0:
        raise UsageError("--interval must be positive and --publish-timeout not negative")
    try:
        from pydantic import TypeAdapter

        TypeAdapter(Name).validate_python(args.instance)
        if not args.instance:
            raise ValueError
    except (ValidationError, ValueError):
        raise UsageError(f"invalid instance name {args.instance!r}") from None
    publisher = Publisher(
        settings.amqp_urls, capacity=1000, connection_name="ganeti-dispatcher-progress-monitor"
    )
    publisher.start()
    try:
        rc = await monitor(
            cmd,
            instance=args.instance,
            read_bytes=args.read_bytes,
            write_bytes=args.write_bytes,
            interval=args.interval,
            sink=publisher,
        )
    finally:
        lost = await publisher.close(args.publish_timeout)
        if lost:
            import logging

            logging.getLogger("dispatcher.eventd.progress_monitor").warning(
                "%d progress messages not delivered (broker unreachable)", lost
            )
    return rc
