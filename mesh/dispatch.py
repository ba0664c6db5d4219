"""What the gRPC proxy and the REST gateway share: from a request's target to a local, loaded model.

Protocol-free: callers turn MeshError into a gRPC status or an HTTP answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from mesh.errors import MeshError
from mesh.local_models import ModelLoader
from mesh.routing import RoutingTable
from mesh.status import live_copies
from mesh.target import RequestTarget, TargetKind


class Dispatcher:
    def __init__(self, table: RoutingTable, loader: ModelLoader) -> None:
        self._table = table
        self._loader = loader

    def model_id(self, target: RequestTarget) -> str:
        """The concrete model id for a request target, or NOT_FOUND."""
        # vmodels arrive with the multi-pod mesh; until then a vmodel id resolves to nothing.
        if target.kind is not TargetKind.VMODEL and self._table.model(target.id) is not None:
            return target.id
        what = "vmodel" if target.kind is TargetKind.VMODEL else "model"
        raise MeshError(grpc.StatusCode.NOT_FOUND, f"{what} not found: {target.id}")

    def ready(self, target: RequestTarget) -> bool:
        """Registered and loaded on a live pod; never triggers a load."""
        try:
            record = self._table.model(self.model_id(target))
        except MeshError:
            return False
        return record is not None and bool(live_copies(record.holders, self._table.instances))

    async def ensure_local(self, model_id: str, timeout_s: float | None) -> None:
        """Load the model here if needed, within the caller's deadline (the load itself goes on)."""
        if self._loader.is_loaded(model_id):
            return
        try:
            await asyncio.wait_for(self._loader.ensure_loaded(model_id), timeout_s)
        except TimeoutError:
            raise MeshError(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline passed while {model_id} was loading"
            ) from None

    @contextmanager
    def serving(self, model_id: str) -> Iterator[None]:
        """Mark a request in flight: the model is not evicted under it."""
        self._loader.acquire(model_id)
        try:
            yield
        finally:
            self._loader.release(model_id)
