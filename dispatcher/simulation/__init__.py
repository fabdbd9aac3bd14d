"""Simulated clusters: realistic event streams generated without I/O (``streams``) and
``dispatcher simulate``, which creates their rows and publishes them (``publish``)."""
