"""The gateway: host routing, auth, streaming proxy and the OpenAI-compatible API over replicas."""
