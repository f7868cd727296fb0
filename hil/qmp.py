"""QMP driver: one job, talking QMP to one QEMU through the ``qemu.qmp`` library.

We are the socket *server* and QEMU connects to us at start-up (as QEMU's own
``QEMUMachine`` does), so there is no race on a socket appearing.  ``qemu.qmp`` is
asyncio; the driver runs its event loop in a private thread so that

* the console can be read from the very first byte while QMP negotiates, and
* events (SHUTDOWN, RESET, ...) are collected with their arrival time even while the
  caller is busy with the console.

Callers use plain blocking methods: ``listen``, ``accept``, ``cmd``, ``events``, ``close``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError

from .errors import InfraError


class QmpDriver:
    def __init__(self, name: str = "hil"):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"qmp-{name}", daemon=True
        )
        self._thread.start()
        self._client = QMPClient(name)
        self._events: list[tuple[float, dict]] = []
        self._lock = threading.Lock()
        self._accepted: Future | None = None
        self._pump: Future | None = None

    # -- plumbing -------------------------------------------------------------
    def _call(self, coro: Coroutine, timeout: float | None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _collect_events(self) -> None:
        async for event in self._client.events:
            with self._lock:
                self._events.append((time.monotonic(), dict(event)))

    # -- lifetime -------------------------------------------------------------
    def listen(self, path: str) -> None:
        """Start listening on a unix socket; returns once QEMU can connect."""
        self._call(self._client.start_server(path), 10)

    def accept_async(self) -> None:
        """Accept QEMU's connection in the background (see ``wait_connected``)."""

        async def accept() -> None:
            await self._client.accept()
            self._pump = asyncio.ensure_future(self._collect_events())

        self._accepted = asyncio.run_coroutine_threadsafe(accept(), self._loop)

    def wait_connected(self, timeout: float) -> None:
        if self._accepted is None:
            raise RuntimeError("accept_async() was not called")
        try:
            self._accepted.result(timeout)
        except TimeoutError:
            raise InfraError(
                f"QEMU did not connect to the QMP socket within {timeout:.0f} s"
            ) from None
        except QMPError as e:
            raise InfraError(f"QMP handshake with QEMU failed: {e}") from None

    @property
    def connected(self) -> bool:
        return bool(self._accepted and self._accepted.done() and self._accepted.exception() is None)

    def close(self) -> None:
        """Disconnect and stop the loop thread; safe to call more than once."""
        if not self._loop.is_running():
            return

        async def shutdown() -> None:
            for task in (self._pump, self._accepted):
                if task is not None and not task.done():
                    task.cancel()
            await self._client.disconnect()

        try:
            self._call(shutdown(), 5)
        except Exception:  # noqa: BLE001 - tearing down: QEMU may already be gone
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    # -- use ------------------------------------------------------------------
    def cmd(self, name: str, timeout: float = 10.0, **args: Any) -> Any:
        """Execute one QMP command; QMP errors and timeouts become InfraError."""
        if not self.connected:
            raise InfraError(f"QMP '{name}': not connected to QEMU")
        try:
            return self._call(self._client.execute(name, args or None), timeout)
        except TimeoutError:
            raise InfraError(f"QMP '{name}' got no answer within {timeout:.0f} s") from None
        except QMPError as e:
            raise InfraError(f"QMP '{name}' failed: {e}") from None

    def events(self) -> list[tuple[float, dict]]:
        """All events so far as (monotonic arrival time, event message)."""
        with self._lock:
            return list(self._events)

    def __enter__(self) -> QmpDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
