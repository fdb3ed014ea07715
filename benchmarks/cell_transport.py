"""NVFlare's own transport between this process and a one-client "server" in a child process, for memory benchmarks.

:class:`PeerTransport` connects a client cell of this process to a server cell in a child process (this file run as
a script) over TCP on localhost. :meth:`PeerTransport.send` serialises a Shareable with FOBS as a client's
``SubmitUpdate`` does: the arrays stay here as a download transaction that the server's cell downloads (chunked,
one item per array) before it replies. The server keeps what it received and :meth:`PeerTransport.receive` gets it
back as a client's ``getTask`` does: the reply holds references that this process downloads. So the arrays' bytes
on the wire, their copies and the streaming buffers are NVFlare's, in this process as in a client's; the server's
memory is the child's, which runs :class:`~medfl.common.memory_guard.GarbageGuard` as medfl's server does. With
``piece_bytes`` the server does what medfl's server does with results and tasks whose large arrays travel in
pieces (:mod:`medfl.common.pieces`): it puts a result's pieces back together on arrival and cuts the task's
arrays again before sending it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from typing import Optional

from nvflare.apis.dxo import from_shareable
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.fuel.f3.cellnet.cell import Cell
from nvflare.fuel.f3.message import Message
from nvflare.fuel.utils import fobs
from nvflare.private.fed.utils.fed_utils import nvflare_fobs_initialize

from medfl.common.memory_guard import GarbageGuard
from medfl.common.pieces import PIECES_META, SplitLargeArrays, join_arrays

SERVER, CLIENT = "server", "site-1"  # the root cell must be called "server"
CHANNEL, RESULT, TASK = "bench", "result", "task"
CONNECT_TIMEOUT_S = 60
TRANSFER_TIMEOUT_S = 1800


def free_url() -> str:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return f"tcp://localhost:{probe.getsockname()[1]}"


def serve(url: str, piece_bytes: int = 0) -> None:
    """The server cell: keep the last result received, send it back as the next task (with ``piece_bytes``: join
    the result's pieces on arrival, cut the task's arrays into pieces of at most that size)."""
    nvflare_fobs_initialize()
    GarbageGuard().start()
    cell = Cell(fqcn=SERVER, root_url=url, secure=False, credentials={})
    kept = {}

    def on_result(message: Message) -> Message:
        result = fobs.loads(message.payload, fobs_ctx=cell.get_fobs_context())  # downloads every array
        dxo = from_shareable(result)
        if PIECES_META in dxo.meta:
            join_arrays(dxo.data, dxo.meta.pop(PIECES_META))
        kept[TASK] = dxo.update_shareable(result)
        return Message({}, b"")

    def on_task(message: Message) -> Message:
        task = kept.pop(TASK)
        if piece_bytes:
            task = SplitLargeArrays(piece_bytes).process(task, FLContext())
        return Message({}, fobs.dumps(task, fobs_ctx=cell.get_fobs_context()))

    cell.register_request_cb(channel=CHANNEL, topic=RESULT, cb=on_result)
    cell.register_request_cb(channel=CHANNEL, topic=TASK, cb=on_task)
    cell.start()
    threading.Event().wait()  # until the client kills this process


class PeerTransport:
    """A client cell here and the server cell of :func:`serve` in a child process."""

    def __init__(self, piece_bytes: int = 0):
        nvflare_fobs_initialize()
        url = free_url()
        self.server = subprocess.Popen([sys.executable, __file__, url, str(piece_bytes)], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        connected = threading.Event()
        self.cell = Cell(fqcn=CLIENT, root_url=url, secure=False, credentials={})
        self.cell.core_cell.set_cell_connected_cb(lambda agent: connected.set())
        self.cell.start()
        if not connected.wait(CONNECT_TIMEOUT_S):
            self.close()
            raise RuntimeError(f"the server cell at {url} did not connect within {CONNECT_TIMEOUT_S} s")

    def _request(self, topic: str, payload) -> Message:
        reply: Optional[Message] = self.cell.send_request(channel=CHANNEL, topic=topic, target=SERVER,
                                                          request=Message({}, payload), timeout=TRANSFER_TIMEOUT_S)
        if reply is None or reply.payload is None:
            raise RuntimeError(f"no reply from the server cell to {topic!r}")
        return reply

    def send(self, shareable: Shareable) -> None:
        """Send ``shareable`` (its arrays downloaded by the server) and wait until the server has it all."""
        self._request(RESULT, fobs.dumps(shareable, fobs_ctx=self.cell.get_fobs_context()))

    def receive(self) -> Shareable:
        """The server's task: the last Shareable it received, downloaded back."""
        reply = self._request(TASK, b"")
        return fobs.loads(reply.payload, fobs_ctx=self.cell.get_fobs_context())

    def close(self) -> None:
        self.cell.stop()
        self.server.kill()
        self.server.wait()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0)
