"""Projections of the streams: the SQL read model (runner, readmodel) and the directory KV."""
