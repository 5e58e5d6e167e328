"""KV-aware routing support: block hashing, the KV event publisher, the
event-plane transports and the local indexer a frontend recovers from."""
