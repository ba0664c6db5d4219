"""vmodels: aliases whose active model keeps serving until the target is loaded, then switches (pure).

Every function here edits a RecordSet read in one etcd transaction. A model's
``vmodel_refcount`` counts the vmodels that name it as active or target; a
model with references cannot be unregistered, and one registered with
``auto_delete`` is deleted in the same transaction that drops its last reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc

from mesh.errors import MeshError
from mesh.registry.records import ModelRecord, VModelRecord
from mesh.registry.store import RecordSet, Unchanged


@dataclass(frozen=True)
class SetVModel:
    vmodel_id: str
    target: str
    owner: str = ""
    update_only: bool = False
    expected_target: str = ""
    force: bool = False
    new_target: ModelRecord | None = None  # modelInfo given: register the target in the same transaction


def needed_models(vmodel_id: str, target: str) -> Callable[[dict[str, VModelRecord | None]], set[str]]:
    """The model records a change to ``vmodel_id`` touches: its active, its target, the new target."""

    def models(vmodels: dict[str, VModelRecord | None]) -> set[str]:
        current = vmodels.get(vmodel_id)
        named = {target} | ({current.active, current.target} if current else set())
        return {m for m in named if m}

    return models


def _drop_reference(records: RecordSet, model_id: str) -> None:
    model = records.models.get(model_id)
    if model is None:
        return
    model.vmodel_refcount = max(0, model.vmodel_refcount - 1)
    if model.vmodel_refcount == 0 and model.auto_delete:
        records.models[model_id] = None


def _add_reference(records: RecordSet, model_id: str) -> None:
    model = records.models[model_id]
    assert model is not None
    model.vmodel_refcount += 1


def _switch(records: RecordSet, vmodel: VModelRecord) -> None:
    """The target becomes active; the old active loses this reference."""
    old = vmodel.active
    vmodel.active = vmodel.target
    vmodel.failed = False
    if old != vmodel.target:
        _drop_reference(records, old)


def loaded(records: RecordSet, model_id: str, alive: Callable[[str], bool]) -> bool:
    """Held by a live pod, according to the records read in this transaction."""
    model = records.models.get(model_id)
    return model is not None and any(alive(p) for p in model.holders)


def set_vmodel(records: RecordSet, change: SetVModel, alive: Callable[[str], bool]) -> None:
    """Create the vmodel or point it at a new target, with ModelMesh's checks and codes."""
    current = records.vmodels.get(change.vmodel_id)
    if current is not None and change.owner and current.owner != change.owner:
        raise MeshError(grpc.StatusCode.ALREADY_EXISTS, f"vmodel {change.vmodel_id} has another owner")
    if change.expected_target:
        if current is None and change.expected_target != change.target:
            raise MeshError(grpc.StatusCode.FAILED_PRECONDITION, f"vmodel not found: {change.vmodel_id}")
        if (
            current is not None
            and change.expected_target != current.target
            and current.target != change.target
        ):
            raise MeshError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"vmodel {change.vmodel_id} targets {current.target}, not {change.expected_target}",
            )
    if current is None and change.update_only:
        raise MeshError(grpc.StatusCode.NOT_FOUND, f"vmodel not found: {change.vmodel_id}")

    target = records.models.get(change.target)
    if change.new_target is not None:
        if target is None:
            records.models[change.target] = target = change.new_target
        elif not target.same_info(change.new_target.type, change.new_target.path, change.new_target.key):
            raise MeshError(
                grpc.StatusCode.ALREADY_EXISTS,
                f"model {change.target} is already registered with different type/path/key",
            )
    if target is None:
        raise MeshError(grpc.StatusCode.NOT_FOUND, f"model not found: {change.target}")

    if current is None:
        records.vmodels[change.vmodel_id] = VModelRecord(
            active=change.target, target=change.target, owner=change.owner
        )
        _add_reference(records, change.target)
        return
    if current.target == change.target:
        if change.force and current.in_transition:
            _switch(records, current)
            return
        raise Unchanged  # already pointing there: idempotent
    if current.in_transition:  # a newer target replaces the pending one
        _drop_reference(records, current.target)
    if change.target == current.active:  # back to the active model: the transition is called off
        current.target = current.active
        current.failed = False
        return
    _add_reference(records, change.target)
    current.target = change.target
    current.failed = False
    if change.force or not loaded(records, current.active, alive) or loaded(records, change.target, alive):
        _switch(records, current)


def complete_transition(
    records: RecordSet, vmodel_id: str, target: str, alive: Callable[[str], bool]
) -> None:
    """Switch to ``target`` if the vmodel still points there and a live pod holds it."""
    vmodel = records.vmodels.get(vmodel_id)
    if (
        vmodel is None
        or not vmodel.in_transition
        or vmodel.target != target
        or not loaded(records, target, alive)
    ):
        raise Unchanged
    _switch(records, vmodel)


def mark_failed(records: RecordSet, vmodel_id: str, target: str, failed: bool) -> None:
    vmodel = records.vmodels.get(vmodel_id)
    if vmodel is None or vmodel.target != target or not vmodel.in_transition or vmodel.failed == failed:
        raise Unchanged
    vmodel.failed = failed


def delete_vmodel(records: RecordSet, vmodel_id: str, owner: str) -> None:
    """Unknown vmodel or another owner: nothing happens (ModelMesh answers OK)."""
    vmodel = records.vmodels.get(vmodel_id)
    if vmodel is None or (owner and vmodel.owner != owner):
        raise Unchanged
    records.vmodels[vmodel_id] = None
    _drop_reference(records, vmodel.active)
    if vmodel.in_transition:
        _drop_reference(records, vmodel.target)
