"""Applying a batch of validated messages to the database in one transaction (``EventStore``).

Order independence (CONTRACT §5.2) works like this, per target (a VM, or a network on one
backend):

1. the target row is locked (``FOR UPDATE``, ids in ascending order so that concurrent
   daemons never deadlock);
2. each message is inserted into the target's history; the unique ``(target, digest)`` key
   turns a redelivery into a no-op (``duplicate``);
3. if every new message sorts after the newest one already folded into the row
   (``last_key``), the new messages are applied to the row's state incrementally;
   otherwise the state is recomputed by folding the whole history from the start.

Either way the row ends up equal to the in-order fold of its distinct messages, whichever
daemon applied which message in which order. The hot path speaks asyncpg directly: a
handful of array-parameter statements per batch, whatever its size.

Each kind of target has a module with its SQL beside it: ``vms`` (virtual machines, their
NICs and diagnostics), ``networks`` (networks per backend), ``backends`` (when each cluster
last had an event); ``batch`` is what they share.
"""

from dispatcher.db.store.event_store import EventStore
from dispatcher.db.store.networks import refresh_network_states

__all__ = ["EventStore", "refresh_network_states"]
