"""Where to load a model on a cache miss (pure).

Rules, in order: a pod whose runtime serves the model's type, that
is not shutting down, not excluded (it failed the model, or did not answer);
then not full before full; among full pods the one whose least-recently-used
model is oldest (evicting it costs least); then fewest models, most free
bytes, lowest request rate; ties broken by rendezvous (highest-random-weight)
hashing of the model id, so two pods that miss at the same moment with the
same view choose the same target.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import xxhash

from mesh.registry.records import InstanceRecord

# Protocols every pod's runtime speaks (MLServer and Triton: KServe v2 over gRPC and REST).
PROTOCOLS_SPOKEN = frozenset({"pv:grpc-v2", "pv:v2"})


def serves_type(instance: InstanceRecord, model_type: str) -> bool:
    """Whether the pod's runtime takes a model of this type. An instance that lists no types serves any.

    The type is a plain name (``sklearn``) or modelmesh-serving's label expression, every part required:
    ``mt:<format>[:<version>]`` (the pod lists the label, or the bare format when no version is asked),
    ``rt:<runtime>`` (the pod lists the label) and ``pv:<protocol>`` (spoken by every pod, or listed).
    """
    types = instance.runtime_types
    if not types:
        return True
    for part in model_type.lower().split("|"):
        label = part.strip()
        if label in types or label in PROTOCOLS_SPOKEN:
            continue
        kind, sep, rest = label.partition(":")
        if sep and kind == "mt" and ":" not in rest and rest in types:
            continue
        return False
    return True


def rendezvous_weight(model_id: str, pod_id: str) -> int:
    return xxhash.xxh64_intdigest(f"{model_id}\x00{pod_id}".encode())


def placement_key(model_id: str, pod_id: str, instance: InstanceRecord, size_hint: int) -> tuple[int, ...]:
    free = instance.capacity_bytes - instance.used_bytes
    full = free < size_hint
    return (
        int(full),
        instance.oldest_lru_ms if full else 0,
        instance.model_count,
        -free,
        instance.requests_per_min,
        -rendezvous_weight(model_id, pod_id),
    )


def choose_load_target(
    model_id: str,
    model_type: str,
    instances: Mapping[str, InstanceRecord],
    exclude: Collection[str] = (),
    size_hint: int = 0,
) -> str | None:
    """The pod that should load the model, or None when no pod can."""
    candidates = [
        pod_id
        for pod_id, instance in instances.items()
        if pod_id not in exclude
        and not instance.shutting_down
        and instance.runtime_ready
        and serves_type(instance, model_type)
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda p: placement_key(model_id, p, instances[p], size_hint))
