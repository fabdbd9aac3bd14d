"""ganeti-dispatcher: keeps a cloud database in step with Ganeti clusters."""

__version__ = "0.1.0"
