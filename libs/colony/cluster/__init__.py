"""Cluster primitives: membership records, the controller lease, epochs, the cluster view."""
