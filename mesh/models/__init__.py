"""The models this pod holds: loads and evictions by bytes, request rates, the runtime's channels."""
