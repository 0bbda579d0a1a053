"""An in-process engine for the federated simulation: the project's real ServerApp and ClientApp, with
messages handed from one to the other in this process instead of through Flower's Ray backend.

What is the same as ``run_simulation``: the ServerApp's main (strategy, DP wrappers, checkpoints,
history), the ClientApp with its mods, the Message and record types, and the order of calls (all
clients of a round, then aggregation). What differs: no Ray actors (each client runs in turn on this
process's thread), no serialisation, no SuperLink. Ray's start-up (tens of seconds) dominates short
runs on a 2-core machine; this engine lets a study run many small federations within its budget
(``benchmarks/federated.py``) and lets tests run a federation in seconds.

It counts the bytes of every ArrayRecord sent and received (the payload that dominates a real
message; protobuf framing not included).

It sets Flower's task identity of this process (run 0, node 0), which the Flower runtime otherwise
sets, because Messages created by a strategy read it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp

log = logging.getLogger("federated")


def _payload_bytes(msg: Message) -> int:
    if not msg.has_content():
        return 0
    return sum(int(a.numpy().nbytes) for ar in msg.content.array_records.values() for a in ar.values())


class InProcessGrid(Grid):
    """A Grid whose nodes are ``client_app`` called in this process, one Context (and state) per node."""

    def __init__(self, client_app: ClientApp, num_nodes: int) -> None:
        self.client_app = client_app
        self.contexts = {
            i + 1: Context(run_id=0, node_id=i + 1, node_config={"partition-id": i}, state=RecordDict(), run_config={})
            for i in range(num_nodes)
        }
        self._run = None
        self.bytes_down = 0
        self.bytes_up = 0
        self.rounds: list[dict] = []

    def set_run(self, run) -> None:  # type: ignore[override]
        self._run = run

    @property
    def run(self):  # type: ignore[override]
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None) -> Message:
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("InProcessGrid answers with send_and_receive only")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("InProcessGrid answers with send_and_receive only")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        t0 = time.perf_counter()
        down = up = 0
        kinds = set()
        for msg in messages:
            kinds.add(msg.metadata.message_type)
            down += _payload_bytes(msg)
            ctx = self.contexts[msg.metadata.dst_node_id]
            try:
                reply = self.client_app(msg, ctx)
            except Exception as exc:  # noqa: BLE001 - a failing client is an error reply, as on a SuperNode
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            up += _payload_bytes(reply)
            replies.append(reply)
        self.bytes_down += down
        self.bytes_up += up
        self.rounds.append({"type": ",".join(sorted(kinds)), "seconds": time.perf_counter() - t0, "bytes_down": down, "bytes_up": up})
        return replies


def run_in_process(server_app: ServerApp, client_app: ClientApp, num_supernodes: int) -> InProcessGrid:
    """Run ``server_app`` against ``num_supernodes`` in-process nodes; returns the grid (its byte counts)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 0, 0, 0
    grid = InProcessGrid(client_app, num_supernodes)
    server_app(grid, Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    return grid
