"""The `tidegate` command: argument parsing (main), the subcommands, settings built once at the
entry point, the runtime that assembles a running reconciler, and `make up`'s quickstart.
"""
