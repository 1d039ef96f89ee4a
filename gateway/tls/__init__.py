"""HTTPS on the gateway: certificates from files or ACME, picked per host by SNI, reloaded live."""
