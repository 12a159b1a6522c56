"""Training engine: optimizer and schedule, strategies, the distributed loop, callbacks, trainer."""
