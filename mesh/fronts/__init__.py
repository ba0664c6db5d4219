"""What clients talk to: the HTTP/2 front, the grpc.aio proxy, the REST gateway, their limits."""
