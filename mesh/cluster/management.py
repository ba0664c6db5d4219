"""The ModelMesh management API (mmesh.ModelMesh), with ModelMesh's semantics and error codes.

Writes go to etcd (CAS); answers are read from this pod's routing table once
it has caught up with the write, so a caller always sees its own change.
Requests that do not decode, or carry a string over its limit (mesh/limits.py), are INVALID_ARGUMENT
before anything is read or written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from mesh.cluster.transitions import Transitions
from mesh.cluster.vmodels import SetVModel, delete_vmodel, needed_models, set_vmodel
from mesh.errors import MeshError
from mesh.limits import request_error
from mesh.models.local import now_ms
from mesh.outcomes import MESH_ERRORS, abort
from mesh.registry.records import ModelRecord
from mesh.registry.status import model_status
from mesh.registry.store import EtcdStore, Unchanged
from mesh.registry.view import RoutingTable
from mesh.routing.placement import serves_type
from mesh.routing.router import Router
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc

log = logging.getLogger(__name__)

Status = mm.ModelStatusInfo.ModelStatus
VStatus = mm.VModelStatusInfo.VModelStatus
SYNC_TRANSITION_TIMEOUT_S = 240  # setVModel(sync) waits this long for a transition, as ModelMesh
HOUR_MS = 3600 * 1000
# A new model must not push out models in recent use: ModelMesh backdates its last use.
BACKDATE_LOAD_NOW_MS = HOUR_MS
BACKDATE_NOT_LOADED_MS = 6 * HOUR_MS
# A registration asks this pod's runtime for the model's size (a stat); a runtime that does not answer in
# time leaves it to the model's first miss.
REGISTRATION_PREDICT_TIMEOUT_S = 1.0

R = TypeVar("R")
SERVICE = mm.DESCRIPTOR.services_by_name["ModelMesh"]


@dataclass(frozen=True)
class Undecodable:
    """What the request deserializer yields for bytes that are not the method's message: grpc would log a
    traceback and answer UNKNOWN if the deserializer raised."""

    message: str  # the request message's name


def lenient_deserializer(message_class: type[Message]) -> Callable[[bytes], Message | Undecodable]:
    def deserialize(data: bytes) -> Message | Undecodable:
        try:
            return message_class.FromString(data)
        except DecodeError:
            return Undecodable(message_class.DESCRIPTOR.name)

    return deserialize


def _grpc_errors(
    method: Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]]:
    """Refuse undecodable or oversized requests; turn MeshError and etcd failures into gRPC status codes."""

    @wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cannot decode {request.message}")
        too_long = request_error(request)
        if too_long is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, too_long)
        try:
            return await method(self, request, context)
        except MESH_ERRORS as e:  # etcd's errors included (mesh/outcomes.py: grpc_status)
            await abort(context, e)
        except TimeoutError:  # the servicer's only timeouts are etcd's
            await context.abort(grpc.StatusCode.UNAVAILABLE, "etcd unavailable: timed out")
        raise AssertionError("unreachable")

    return wrapper


def _required(value: str, what: str) -> str:
    if not value:
        raise MeshError(grpc.StatusCode.INVALID_ARGUMENT, f"{what} must be non-empty")
    return value


class ModelMeshServicer(mm_grpc.ModelMeshServicer):
    def __init__(
        self,
        store: EtcdStore,
        table: RoutingTable,
        router: Router,
        transitions: Transitions,
        failure_expiry_s: float,
        predict_size: Callable[[str, ModelRecord, float], Awaitable[int]],
    ) -> None:
        self._store = store
        self._predict_size = predict_size
        self._table = table
        self._router = router
        self._transitions = transitions
        self._expiry_ms = int(failure_expiry_s * 1000)
        self._background: set[asyncio.Task[None]] = set()

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Serve mmesh.ModelMesh on ``server``: the generated registration, with a deserializer that
        does not raise (an undecodable request is INVALID_ARGUMENT, not UNKNOWN and a logged traceback)."""
        handlers = {
            method.name: grpc.unary_unary_rpc_method_handler(
                getattr(self, method.name),
                request_deserializer=lenient_deserializer(getattr(mm, method.input_type.name)),
                response_serializer=getattr(mm, method.output_type.name).SerializeToString,
            )
            for method in SERVICE.methods
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
        server.add_registered_method_handlers(SERVICE.full_name, handlers)

    def _status(self, model_id: str) -> mm.ModelStatusInfo:
        return model_status(
            self._router.local_record(model_id), now_ms(), self._expiry_ms, self._table.instances
        )

    async def _load(self, model_id: str, last_used_ms: int | None, sync: bool) -> mm.ModelStatusInfo:
        """Start (or join) a load; with ``sync`` wait for its outcome."""
        load = asyncio.ensure_future(self._router.load_somewhere(model_id, last_used_ms))
        if sync:
            try:
                await load
            except MeshError as e:
                if e.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
                    raise
                status = self._status(model_id)
                if e.message not in status.errors:  # a refusal not recorded as a failure (no room)
                    status.errors.insert(0, e.message)
                return status
            return self._status(model_id)
        self._background.add(load)
        load.add_done_callback(self._forget)
        await asyncio.sleep(0)  # let the load start: a remembered failure is refused right here
        status = self._status(model_id)
        if status.status in (Status.NOT_LOADED, Status.LOADING_FAILED) and not load.done():
            status.status = Status.LOADING
        return status

    async def _size_at_registration(self, model_id: str, record: ModelRecord) -> int:
        """The size this pod's runtime predicts for a model being registered, to write in its new record:
        the model's first miss, on any pod, then reserves it without a round trip to its adapter. 0 (the
        loading pod asks at the miss) when this pod's runtime does not serve the type, the model is
        registered already with these files, or the runtime does not answer in time."""
        own = self._table.instance(self._router.pod_id)
        known = self._table.model(model_id)
        if (
            own is None
            or not serves_type(own, record.type)
            or (known is not None and known.same_info(record.type, record.path, record.key))
        ):
            return 0
        return await self._predict_size(model_id, record, REGISTRATION_PREDICT_TIMEOUT_S)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # the outcome is in the registry; don't log it as never retrieved

    @_grpc_errors
    async def registerModel(
        self, request: mm.RegisterModelRequest, context: grpc.aio.ServicerContext
    ) -> mm.ModelStatusInfo:
        model_id = _required(request.modelId, "modelId")
        info = request.modelInfo
        _required(info.type, "modelInfo.type")
        backdate = BACKDATE_LOAD_NOW_MS if request.loadNow else BACKDATE_NOT_LOADED_MS
        last_used = request.lastUsedTime or now_ms() - backdate
        record = ModelRecord(type=info.type, path=info.path, key=info.key, last_used_ms=last_used)
        record.size_bytes = await self._size_at_registration(model_id, record)
        existing, revision = await self._store.create_model(model_id, record)
        if existing is not None and not existing.same_info(info.type, info.path, info.key):
            raise MeshError(
                grpc.StatusCode.ALREADY_EXISTS,
                f"model {model_id} is already registered with different type/path/key",
            )
        await self._table.wait_for_revision(revision)
        log.info("registered %s (type %s)", model_id, info.type)
        if request.loadNow:
            return await self._load(model_id, last_used, request.sync)
        return self._status(model_id)

    @_grpc_errors
    async def unregisterModel(
        self, request: mm.UnregisterModelRequest, context: grpc.aio.ServicerContext
    ) -> mm.UnregisterModelResponse:
        model_id = _required(request.modelId, "modelId")

        def delete(current: ModelRecord | None) -> ModelRecord | None:
            if current is None:
                raise Unchanged
            if current.vmodel_refcount > 0:
                raise MeshError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"model {model_id} is referenced by {current.vmodel_refcount} vmodel(s)",
                )
            return None

        _, revision = await self._store.update_model(model_id, delete)
        # Holders see the delete through their watch and unload the model.
        await self._table.wait_for_revision(revision)
        log.info("unregistered %s", model_id)
        return mm.UnregisterModelResponse()

    @_grpc_errors
    async def getModelStatus(
        self, request: mm.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> mm.ModelStatusInfo:
        model_id = _required(request.modelId, "modelId")
        if self._table.model(model_id) is None:  # perhaps registered through another pod a moment ago
            await self._router.view_current()
        return self._status(model_id)

    @_grpc_errors
    async def ensureLoaded(
        self, request: mm.EnsureLoadedRequest, context: grpc.aio.ServicerContext
    ) -> mm.ModelStatusInfo:
        model_id = _required(request.modelId, "modelId")
        if self._table.model(model_id) is None and (
            not await self._router.view_current() or self._table.model(model_id) is None
        ):
            raise MeshError(grpc.StatusCode.NOT_FOUND, f"model not found: {model_id}")
        return await self._load(model_id, request.lastUsedTime or None, request.sync)

    # -- vmodels ----------------------------------------------------------------------------
    def _vmodel_status(self, vmodel_id: str, owner: str = "") -> mm.VModelStatusInfo:
        vmodel = self._table.vmodel(vmodel_id)
        if vmodel is None or (owner and vmodel.owner != owner):
            return mm.VModelStatusInfo(status=VStatus.NOT_FOUND)
        if not vmodel.in_transition:
            status = VStatus.DEFINED
        else:
            status = VStatus.TRANSITION_FAILED if vmodel.failed else VStatus.TRANSITIONING
        return mm.VModelStatusInfo(
            status=status,
            activeModelId=vmodel.active,
            targetModelId=vmodel.target,
            activeModelStatus=self._status(vmodel.active),
            targetModelStatus=self._status(vmodel.target) if vmodel.in_transition else None,
            owner=vmodel.owner,
        )

    @_grpc_errors
    async def setVModel(
        self, request: mm.SetVModelRequest, context: grpc.aio.ServicerContext
    ) -> mm.VModelStatusInfo:
        vmodel_id = _required(request.vModelId, "vModelId")
        target = _required(request.targetModelId, "targetModelId")
        new_target = None
        if request.HasField("modelInfo"):
            info = request.modelInfo
            _required(info.type, "modelInfo.type")
            backdate = BACKDATE_LOAD_NOW_MS if request.loadNow else BACKDATE_NOT_LOADED_MS
            new_target = ModelRecord(
                type=info.type,
                path=info.path,
                key=info.key,
                last_used_ms=now_ms() - backdate,
                auto_delete=request.autoDeleteTargetModel,
            )
            new_target.size_bytes = await self._size_at_registration(target, new_target)
        change = SetVModel(
            vmodel_id,
            target,
            owner=request.owner,
            update_only=request.updateOnly,
            expected_target=request.expectedTargetModelId,
            force=request.force,
            new_target=new_target,
        )
        alive = self._router.alive
        revision = await self._store.update_records(
            [vmodel_id], needed_models(vmodel_id, target), lambda rs: set_vmodel(rs, change, alive)
        )
        await self._table.wait_for_revision(revision)
        vmodel = self._table.vmodel(vmodel_id)
        if vmodel is not None and vmodel.in_transition:
            transition = self._transitions.drive(vmodel_id, vmodel.target)
            if request.sync:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(transition), SYNC_TRANSITION_TIMEOUT_S)
        elif request.loadNow:
            await self._load(target, None, request.sync)
        log.info("vmodel %s -> %s", vmodel_id, target)
        return self._vmodel_status(vmodel_id)

    @_grpc_errors
    async def deleteVModel(
        self, request: mm.DeleteVModelRequest, context: grpc.aio.ServicerContext
    ) -> mm.DeleteVModelResponse:
        vmodel_id = _required(request.vModelId, "vModelId")
        revision = await self._store.update_records(
            [vmodel_id], needed_models(vmodel_id, ""), lambda rs: delete_vmodel(rs, vmodel_id, request.owner)
        )
        await self._table.wait_for_revision(revision)
        return mm.DeleteVModelResponse()

    @_grpc_errors
    async def getVModelStatus(
        self, request: mm.GetVModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> mm.VModelStatusInfo:
        return self._vmodel_status(_required(request.vModelId, "vModelId"), request.owner)
