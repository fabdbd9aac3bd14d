"""Ganeti names of our objects (CONTRACT §1): VM ``N`` is instance ``P-N``, network ``N`` is
Ganeti network ``P-net-N``. Anything else is not ours."""

from __future__ import annotations


def instance_name(prefix: str, vm_id: int) -> str:
    return f"{prefix}-{vm_id}"


def network_name(prefix: str, network_id: int) -> str:
    return f"{prefix}-net-{network_id}"


def _id_after(name: str, head: str) -> int | None:
    if not name.startswith(head):
        return None
    tail = name[len(head) :]
    # isdecimal() alone admits non-ASCII digits; a leading zero would make two names one id
    if not tail.isascii() or not tail.isdecimal() or (len(tail) > 1 and tail[0] == "0"):
        return None
    if len(tail) > 10:  # past any id; also keeps int() off names of thousands of digits
        return None
    value = int(tail)
    return value if 0 < value < 2**31 else None


def vm_id_from_instance(prefix: str, name: str) -> int | None:
    return _id_after(name, f"{prefix}-")


def network_id_from_name(prefix: str, name: str) -> int | None:
    return _id_after(name, f"{prefix}-net-")
