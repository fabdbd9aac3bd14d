"""Database: schema (``models``), engine lifecycle (``engine``), queries (``store``)."""
