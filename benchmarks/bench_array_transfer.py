"""Peak resident memory of both ends of one large-array transfer through NVFlare's cells and download service.

    python benchmarks/bench_array_transfer.py [--arrays 3] [--mib 392] [--piece-mib 0]

A Shareable holding ``--arrays`` float32 arrays of ``--mib`` MiB each (FedSM's VGG-11 selector: its first
classifier layer and the layer's two Adam moments, 392 MiB = 411 MB each) goes from this process (the client) to a
server cell in a child process (:mod:`cell_transport`) as a result upload, and comes back as the next task (the
server sends, this process downloads), once per process (NVFlare names a cell once). With ``--piece-mib`` N > 0 the arrays travel cut into pieces of N MiB
(:func:`medfl.common.pieces.split_arrays`; 0: whole, as NVFlare sends them) and are put back together on arrival
(:func:`~medfl.common.pieces.join_arrays`, counted in the receiver's peak). Both ends run
:class:`~medfl.common.memory_guard.GarbageGuard`, as medfl's client and server do.

For each direction the table shows each end's peak RSS during the transfer (``VmHWM`` reset through
``clear_refs`` before it) above its RSS before, in units of one array: the extra copies the transfer holds at
its worst moment. The sender also holds the arrays themselves all along (counted in "before"); the receiver
holds what arrived (``--arrays`` units at the end).
"""

from __future__ import annotations

import argparse
import gc
import os
from typing import Tuple

import numpy as np
from cell_transport import PeerTransport
from proc_memory import reset_peak, status_kib

from nvflare.apis.dxo import DXO, DataKind, from_shareable

from medfl.common.memory_guard import GarbageGuard
from medfl.common.pieces import PIECES_META, join_arrays, split_arrays

MIB = 2 ** 20


class Ends:
    """Peak RSS above the start, in bytes, of this process and the server child over one transfer."""

    def __init__(self, transport: PeerTransport):
        self.pids = (os.getpid(), transport.server.pid)

    def __enter__(self) -> "Ends":
        gc.collect()
        self.before = [status_kib("VmRSS", pid) for pid in self.pids]
        for pid in self.pids:
            reset_peak(pid)
        return self

    def __exit__(self, *exc) -> None:
        self.peaks = [(status_kib("VmHWM", pid) - before) * 1024 for pid, before in zip(self.pids, self.before)]


def payload(arrays: int, mib: int, piece_mib: int) -> DXO:
    rng = np.random.default_rng(0)
    data = {f"a{i}": rng.standard_normal(mib * MIB // 4, dtype=np.float32) for i in range(arrays)}
    data["small"] = np.arange(10, dtype=np.float32)
    if not piece_mib:
        return DXO(DataKind.WEIGHTS, data=data)
    pieces, manifest = split_arrays(data, piece_mib * MIB)
    return DXO(DataKind.WEIGHTS, data=pieces, meta={PIECES_META: manifest})


def run(arrays: int, mib: int, piece_mib: int) -> Tuple[list, list]:
    """Peaks (this process, the server) of the upload and of the download."""
    transport = PeerTransport(piece_bytes=piece_mib * MIB)
    try:
        dxo = payload(arrays, mib, piece_mib)
        with Ends(transport) as upload:
            transport.send(dxo.to_shareable())
        del dxo  # what the sender held
        with Ends(transport) as download:
            received = from_shareable(transport.receive())
            if PIECES_META in received.meta:
                join_arrays(received.data, received.meta.pop(PIECES_META))
        return upload.peaks, download.peaks
    finally:
        transport.close()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arrays", type=int, default=3)
    parser.add_argument("--mib", type=int, default=392)
    parser.add_argument("--piece-mib", type=int, default=0, help="0: whole arrays")
    args = parser.parse_args(argv)
    unit = args.mib * MIB
    print(f"{args.arrays} arrays of {args.mib} MiB; peak RSS above the start, in arrays")
    print(f"{'pieces':>8s} {'upload: client (sends)':>23s} {'server (receives)':>18s} "
          f"{'download: server (sends)':>25s} {'client (receives)':>18s}")
    with GarbageGuard():
        (up_client, up_server), (down_client, down_server) = run(args.arrays, args.mib, args.piece_mib)
    name = f"{args.piece_mib} MiB" if args.piece_mib else "whole"
    print(f"{name:>8s} {up_client / unit:23.2f} {up_server / unit:18.2f} {down_server / unit:25.2f} "
          f"{down_client / unit:18.2f}")


if __name__ == "__main__":
    main()
