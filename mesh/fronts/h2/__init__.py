"""The HTTP/2 front: client connections, the lean codec, the guard, upstream connections."""
