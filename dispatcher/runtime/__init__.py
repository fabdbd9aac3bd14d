"""The service runtime of ``dispatcher run``: the composition root (``daemon``), the health
and metrics listener, and systemd's notify protocol."""
