"""Whether a runtime's "not found" means it lost a model this pod holds, or the request asked for something
the model does not have.

A runtime answers NOT_FOUND both when it no longer has the model (it restarted, someone unloaded it behind
the mesh's back) and when the request names a version, an input or an output the model lacks. Only the first
is the mesh's business: dropping and reloading the copy on the second would let any client churn any model.
So before a copy is dropped, the runtime is asked itself: v2 ``ModelReady`` for the model, with no version.
Ready: the model is there, and the runtime's answer goes back to the client unchanged. Not ready, or an
error (MLServer answers UNKNOWN for a model it does not have): the runtime lost it, and the copy is dropped
and reloaded.

One question per copy, however many requests saw the answer at once: concurrent callers share the one
``ModelReady`` call (single flight per model and copy generation, a number the loader gives every load).
When the runtime has the model, the answer that prompted the question (its code and message, say "version
7 not found") is taken as the request's own for ``READY_RECHECK_S``: the same answer for the same copy in
that time goes to the client without a question, so a stream of one bad request costs the runtime at most
one extra call per second per model. A different answer is asked about at once (single flight still), so a
runtime that loses the model right after a bad request is noticed at the next request, not a second later:
its "not found" for the lost model reads differently ("has no available versions", "version  not found").
At most ``REMEMBERED_ANSWERS`` answers are remembered per copy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

READY_RECHECK_S = 1.0  # how long an answer found to be the request's own stands for a copy
REMEMBERED_ANSWERS = 16  # per copy: the oldest is forgotten first


@dataclass
class ReadyCopy:
    """A copy the runtime said it has, and the answers since found to be the requests' own."""

    generation: int
    answers: dict[str, float] = field(default_factory=dict)  # answer text -> monotonic time confirmed


class CopyCheck:
    """Asks the runtime whether it has a model, at most once at a time per copy (see the module docstring).

    ``model_ready(model_id)`` is the runtime's ModelReady for the model with no version; an exception from
    it counts as "not ready".
    """

    def __init__(
        self,
        model_ready: Callable[[str], Awaitable[bool]],
        recheck_after_s: float = READY_RECHECK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._model_ready = model_ready
        self._recheck_after_s = recheck_after_s
        self._clock = clock
        self._asking: dict[tuple[str, int], asyncio.Task[bool]] = {}  # (model, generation) -> the question
        self._ready: dict[str, ReadyCopy] = {}  # model -> its copy the runtime has (the current one)
        self._lost: dict[str, int] = {}  # model -> the generation the runtime did not have
        self.questions = 0  # ModelReady calls made (tests and logs)

    async def lost(self, model_id: str, generation: int, said: str) -> bool:
        """True when the runtime does not have copy ``generation`` of the model; False when it does, and
        the runtime's answer ``said`` was the request's own."""
        if self._lost.get(model_id) == generation:
            return True  # a lost copy stays lost: only a new load makes a new generation
        ready = self._ready.get(model_id)
        if ready is not None and ready.generation == generation:
            confirmed = ready.answers.get(said)
            if confirmed is not None and self._clock() - confirmed < self._recheck_after_s:
                return False
        key = (model_id, generation)
        question = self._asking.get(key)
        if question is None:
            question = asyncio.ensure_future(self._ask(model_id, generation))
            self._asking[key] = question
        # shielded: a caller whose deadline passes must not cancel the answer the others wait for
        if not await asyncio.shield(question):
            return True
        self._confirm(model_id, generation, said)
        return False

    async def _ask(self, model_id: str, generation: int) -> bool:
        self.questions += 1
        try:
            ready = bool(await self._model_ready(model_id))
        except Exception as e:  # the runtime cannot say it has the model: treat it as lost
            log.info("ModelReady for %s failed (%s): taking the copy as lost", model_id, e)
            ready = False
        finally:
            del self._asking[(model_id, generation)]
        if not ready:
            self._lost[model_id] = generation
            self._ready.pop(model_id, None)
        return ready

    def _confirm(self, model_id: str, generation: int, said: str) -> None:
        ready = self._ready.get(model_id)
        if ready is None or ready.generation != generation:
            ready = self._ready[model_id] = ReadyCopy(generation)
        ready.answers.pop(said, None)  # re-inserted last: dicts keep insertion order, oldest first
        ready.answers[said] = self._clock()
        while len(ready.answers) > REMEMBERED_ANSWERS:
            del ready.answers[next(iter(ready.answers))]

    def forget(self, model_id: str) -> None:
        """The model's copy here is gone (unloaded, dropped): what was found about it no longer applies."""
        self._ready.pop(model_id, None)
        self._lost.pop(model_id, None)
