"""The admin API's HTTP routes, one module per resource (cluster.py is the cluster monitor)."""
