"""The Ganeti-side event producer: Synnefo's snf-ganeti-eventd and snf-progress-monitor for
Ganeti 3, publishing CONTRACT §4 messages to the ``ganeti`` exchange.

- :mod:`~dispatcher.eventd.jobfile`: a job file's JSON → the messages it stands for (pure).
- :mod:`~dispatcher.eventd.inotify`: a small ctypes inotify binding for asyncio.
- :mod:`~dispatcher.eventd.publisher`: bounded buffer, publisher confirms, reconnect, failover.
- :mod:`~dispatcher.eventd.nics`: an instance's NICs, read from the cluster over RAPI.
- :mod:`~dispatcher.eventd.master`: "is this node the Ganeti master" from ssconf.
- :mod:`~dispatcher.eventd.service`: the composition (catch-up, watch, dedupe, publish).
- :mod:`~dispatcher.eventd.progress_monitor`: ``ganeti-create-progress`` from ``/proc/PID/io``.
"""
