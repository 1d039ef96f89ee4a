"""The embedded local backend: replicas as sandboxed processes on this machine (backend), how they
are spawned (spawn, relay, egress), the host's tools (host), their work dirs (layout, proc) and
what their records say (status).

relay.py and egress.py also run by path as standalone scripts, so they import nothing of ours.
"""
