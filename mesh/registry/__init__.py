"""The registry: etcd's records, the store that reads and writes them, the pod's in-memory view."""
