"""Signs of life from the clients, so that a dead client never hangs a round (issue 19.7).

NVFlare's simulator never tells the server that a client process died, and in a deployment it notices a lost site
only after its heartbeat timeout (600 s by default) and a grace period. So every medfl client sends the server a
small aux message (:data:`~medfl.common.protocol.HEARTBEAT_TOPIC`) every
:data:`~medfl.common.protocol.HEARTBEAT_INTERVAL` seconds for the whole run (:class:`Heartbeat`), and the server
deems a client that holds a task dead once it has heard nothing from it for ``client_timeout`` seconds
(:class:`Liveness`, used by :class:`~medfl.common.controller.RoundController`). A slow client keeps sending, so
only a silent one is given up.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Dict, Iterable, List, Optional

from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply

from .protocol import HEARTBEAT_INTERVAL, HEARTBEAT_TOPIC


class Heartbeat:
    """Client side: a daemon thread sending the server a sign of life every ``interval`` seconds, the first at once.

    A failed send is logged once and retried at the next beat: a heartbeat never stops the client.
    """

    def __init__(self, engine, interval: float = HEARTBEAT_INTERVAL):
        self.engine = engine
        self.interval = interval
        self._stopped = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._logger = logging.getLogger(type(self).__name__)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="medfl-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _beat(self) -> None:
        warned = False
        while not self._stopped.is_set():
            try:
                self.engine.fire_and_forget_aux_request(topic=HEARTBEAT_TOPIC, request=Shareable(),
                                                        fl_ctx=self.engine.new_context())
            except Exception as e:  # whatever the transport raises, the next beat tries again
                if not warned:
                    self._logger.warning(f"cannot send a heartbeat to the server ({type(e).__name__}: {e})")
                    warned = True
            self._stopped.wait(self.interval)


class Liveness:
    """Server side: when each client last showed a sign of life, and which clients have been silent too long.

    ``timeout`` 0 gives up on nobody (NVFlare's own detection, and ``task_timeout``, remain).
    """

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic):
        self.timeout = timeout
        self.clock = clock
        self._heard: Dict[str, float] = {}
        self._lock = threading.Lock()

    def heard_from(self, client: str) -> None:
        with self._lock:
            self._heard[client] = self.clock()

    def handle_heartbeat(self, topic: str, request: Shareable, fl_ctx: FLContext) -> Shareable:
        """NVFlare's aux handler for :data:`HEARTBEAT_TOPIC`: the sender (the peer) is alive now."""
        self.heard_from(fl_ctx.get_peer_context().get_identity_name())
        return make_reply(ReturnCode.OK)

    def silent(self, clients: Iterable[str], since: float) -> List[str]:
        """``clients`` with no sign of life for ``timeout`` seconds, counted from ``since`` (a ``clock()`` time, e.g.
        when their task was sent) or from their last heartbeat, whichever is later."""
        if not self.timeout:
            return []
        now = self.clock()
        with self._lock:
            return [c for c in clients if now - max(since, self._heard.get(c, since)) > self.timeout]
