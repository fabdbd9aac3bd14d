"""The inbound pipeline: the AMQP topology, the consumer, the processor that turns a batch
of deliveries into decisions, and the dead-letter tooling. The database side of a batch is
``dispatcher.db.store``."""
