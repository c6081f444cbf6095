"""NATS JetStream plumbing: connection, streams as code, publisher, pull consumer, batching,
dead letters, embedded server."""
