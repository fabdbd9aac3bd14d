"""CONTRACT §6 conventions that hold for every command: one line on stderr for a failure,
exit 2 for bad input (settings included), ``--json`` on either side of the command, and
``create`` answering with an id."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import Env


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("dispatcher: ")
    return lines[0]


def test_an_unreachable_broker_is_one_line_and_exit_1(env: Env) -> None:
    res = env.cli(
        "queue",
        "inspect",
        f"{env.prefix}-events-op",
        check=False,
        extra={"DISPATCHER_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/"},
    )
    assert res.returncode == 1
    assert "broker" in _one_line(res.stderr)
    assert res.stdout == ""


def test_a_queue_not_yet_declared_is_named(env: Env) -> None:
    # no daemon has run with this prefix: the dead-letter queue does not exist
    res = env.cli("queue", "inspect", f"{env.prefix}-events-op", check=False)
    assert res.returncode == 1
    assert f"no queue '{env.prefix}-events-op-dl'" in _one_line(res.stderr)


def test_bad_settings_are_bad_input(env: Env, tmp_path: Path) -> None:
    res = env.cli("flavor", "list", check=False, extra={"DISPATCHER_LOG_LEVEL": "loud"})
    assert res.returncode == 2
    assert "DISPATCHER_LOG_LEVEL" in _one_line(res.stderr)
    missing = tmp_path / "absent.env"
    res = env.cli("flavor", "list", check=False, extra={"DISPATCHER_CONFIG": str(missing)})
    assert res.returncode == 2
    assert str(missing) in _one_line(res.stderr)
    # a level given in any case is accepted
    assert env.cli("flavor", "list", extra={"DISPATCHER_LOG_LEVEL": "debug"}).returncode == 0


def test_json_before_or_after_the_command(env: Env) -> None:
    created = env.json("flavor", "create", "--cpu", "2", "--ram", "512", "--disk", "5")
    before = json.loads(env.cli("--json", "flavor", "list").stdout)
    after = env.json("flavor", "list")
    assert before == after == [created]
    res = env.cli("--json", "run", check=False)
    assert res.returncode == 2 and "--json" in res.stderr


def test_creating_an_existing_flavor_answers_its_id(env: Env) -> None:
    args = ("flavor", "create", "--cpu", "1", "--ram", "128", "--disk", "1")
    first = env.cli(*args)
    again = env.cli(*args)
    assert first.stdout == again.stdout and int(first.stdout) > 0
    assert f"flavor {int(first.stdout)} already has these values" in again.stderr
    assert env.json(*args)["id"] == int(first.stdout)
    assert len(env.json("flavor", "list")) == 1
    other = env.cli(
        "flavor", "create", "--cpu", "1", "--ram", "128", "--disk", "1", "--disk-template", "plain"
    )
    assert int(other.stdout) != int(first.stdout)
