"""Generate the Python stubs for the .proto files in this folder.

Run from the project root: ``python -m protos.generate``. The stubs are
committed; ``--check`` compares the committed descriptors with a fresh
compile so a .proto edit without regeneration fails the tests.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from grpc_tools import protoc  # type: ignore[import-untyped]

PROTO_DIR = Path(__file__).resolve().parent
ROOT = PROTO_DIR.parent
PROTOS = sorted(p.name for p in PROTO_DIR.glob("*.proto"))


def _protoc(args: list[str]) -> None:
    include = str(Path(protoc.__file__).parent / "_proto")
    if protoc.main(["protoc", f"-I{ROOT}", f"-I{include}", *args]) != 0:
        raise RuntimeError(f"protoc failed: {args}")


def generate() -> None:
    files = [f"protos/{name}" for name in PROTOS]
    _protoc([f"--python_out={ROOT}", f"--pyi_out={ROOT}", f"--grpc_python_out={ROOT}", *files])


def compiled_descriptors() -> dict[str, bytes]:
    """Serialized FileDescriptorProtos of a fresh compile, by proto file name."""
    from google.protobuf import descriptor_pb2

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        _protoc([f"--descriptor_set_out={out}", *[f"protos/{n}" for n in PROTOS]])
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    for file in fds.file:
        _strip_json_names(file.message_type)
    return {f.name: f.SerializeToString() for f in fds.file}


def _strip_json_names(messages: Any) -> None:
    """protoc fills json_name in descriptor sets; the Python plugin leaves it out of the stubs."""
    for message in messages:
        for f in message.field:
            f.ClearField("json_name")
        _strip_json_names(message.nested_type)


if __name__ == "__main__":
    generate()
    sys.exit(0)
