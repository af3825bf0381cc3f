"""The Loader and what it owns: configuration, the consumer's cursor and state, the read path, the memory budget."""
