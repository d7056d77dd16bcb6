"""The bus: NATS connection, the names of every subject/stream/bucket, schema set-up."""
