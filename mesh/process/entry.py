"""How a mesh process runs: logging and tracing from its settings, its event loop, and SIGTERM/SIGINT
setting ``stop``.

Shared by the pod's main process and its serving processes, so both honour ``--event-loop`` and
``--busy-poll-us``.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Awaitable, Callable

from mesh.observe.logs import configure_logging
from mesh.observe.tracing import Tracing
from mesh.process import busy_poll
from mesh.process.settings import Settings


def run_until_signalled(settings: Settings, main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    configure_logging(settings.log_level, settings.log_format)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    loop_factory = busy_poll.loop_factory(settings.busy_poll_us)
    if settings.event_loop == "uvloop":
        import uvloop  # optional: measured in load_tests/

        loop_factory = uvloop.new_event_loop  # it has no selector to poll with: never busy-polls
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(run())


def freeze_startup_heap() -> None:
    """Once serving: keep what start-up made out of the garbage collector's full passes.

    Everything imported and wired at start lives as long as the process; a full collection walks it all (about
    30 ms in a pod), pausing every connection. Frozen, a full pass walks only what serving made since.
    """
    gc.collect()
    gc.freeze()


def tracing_for(settings: Settings) -> Tracing:
    """Spans to the OTLP collector when one is configured; else none."""
    if not settings.otlp_endpoint:
        return Tracing.off()
    return Tracing.to_otlp(settings.otlp_endpoint, settings.pod_id, settings.trace_sample_ratio)
