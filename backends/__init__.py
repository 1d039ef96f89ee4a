"""Backends: where replicas run. One module per backend behind the `Backend` protocol in `base`."""
