"""The ivshmem server side of QEMU's ``ivshmem-doorbell`` device, for one guest.

Debian ships no ``ivshmem-server``, and we want the server to *be* a peer anyway (the
vGPU bridge is the other end of the guest's doorbell), so this speaks the protocol of
QEMU's docs/specs/ivshmem-spec.rst directly.  Every message is one little-endian int64,
optionally with one file descriptor (SCM_RIGHTS).  On connect we send:

1. the protocol version, 0;
2. the guest's ID (``GUEST_ID``);
3. -1 with the shared-memory fd (our memfd: the VRAM);
4. the bridge's ID (``BRIDGE_ID``) once per vector, each with an eventfd the guest's
   Doorbell writes (``BRIDGE_ID << 16 | vector``) signal -- the guest -> bridge doorbell;
5. the guest's ID once per vector, each with an eventfd that QEMU turns into MSI-X
   vector ``n`` of the guest -- the bridge -> guest interrupt.

The connection then stays open and carries nothing; when QEMU exits it hangs up, which
is how the bridge learns that its machine is gone.
"""

from __future__ import annotations

import os
import select
import socket
import struct

GUEST_ID = 1
BRIDGE_ID = 0
PROTOCOL_VERSION = 0


class IvshmemServer:
    def __init__(self, path: str, shm_fd: int, vectors: int = 1):
        self.path = path
        self.shm_fd = shm_fd
        self.vectors = vectors
        # guest -> bridge (we read) and bridge -> guest (we write), one per vector
        self.doorbells = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(vectors)]
        self.interrupts = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(vectors)]
        self.listener: socket.socket | None = None
        self.conn: socket.socket | None = None

    def listen(self) -> None:
        """Bind and listen; QEMU must find the socket when it starts."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(self.path)
        s.listen(1)
        self.listener = s

    def accept(self, timeout: float) -> None:
        """Wait for QEMU and hand it the VRAM and the eventfds."""
        self.listener.settimeout(timeout)
        conn, _ = self.listener.accept()
        conn.setblocking(True)
        self.conn = conn
        self._send(PROTOCOL_VERSION)
        self._send(GUEST_ID)
        self._send(-1, self.shm_fd)
        for fd in self.doorbells:
            self._send(BRIDGE_ID, fd)
        for fd in self.interrupts:
            self._send(GUEST_ID, fd)

    def _send(self, value: int, fd: int | None = None) -> None:
        data = struct.pack("<q", value)
        if fd is None:
            self.conn.sendall(data)
        else:
            socket.send_fds(self.conn, [data], [fd])

    def interrupt_guest(self, vector: int = 0) -> None:
        """Raise MSI-X vector ``vector`` in the guest (dropped by QEMU until the guest
        enables MSI-X)."""
        os.eventfd_write(self.interrupts[vector], 1)

    def wait(self, timeout: float | None) -> str:
        """Block until the guest rings (``'doorbell'``), QEMU hangs up (``'hangup'``) or
        ``timeout`` passes (``'timeout'``).  Consumes the doorbell count."""
        p = select.poll()
        p.register(self.doorbells[0], select.POLLIN)
        p.register(self.conn, select.POLLIN | select.POLLHUP | select.POLLERR)
        events = p.poll(None if timeout is None else max(timeout, 0) * 1000)
        result = "timeout"
        for fd, ev in events:
            if fd == self.doorbells[0]:
                try:
                    os.eventfd_read(self.doorbells[0])
                except BlockingIOError:
                    continue
                result = "doorbell"
            elif ev & (select.POLLHUP | select.POLLERR) or not self.conn.recv(1, socket.MSG_PEEK):
                return "hangup"
        return result

    def close(self) -> None:
        for s in (self.conn, self.listener):
            if s is not None:
                s.close()
        for fd in self.doorbells + self.interrupts:
            os.close(fd)
        self.doorbells, self.interrupts = [], []
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
