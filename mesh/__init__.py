"""modelmesh-py: the mesh pod (router, registry view, cache, APIs)."""
