"""Which row comes at each position of an epoch: pure functions of ``(seed, epoch, position)`` (see ``orders``)."""
