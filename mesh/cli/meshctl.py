"""meshctl: drive a mesh from a shell (being written)."""


def main() -> None:
    raise SystemExit("meshctl: not yet")
