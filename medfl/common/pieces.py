"""Large arrays cut into pieces for their transfer and put back together: what bounds NVFlare's streaming copies.

NVFlare 2.9 sends a message's numpy arrays through its download service (``NumpyArrayDecomposer`` with
``ArrayDownloadable``): each array is one item, serialised whole by ``np.savez`` into one ``bytes`` object, sent as
one reply, received into chunk buffers that are joined into one ``bytes`` object and loaded into a new array, while
the receiver already asks for the next item (its pipelined download). Its ``np_download_chunk_size`` setting only
packs small arrays together into one reply; a larger array still travels as one item, and NVFlare offers no
per-array split. For FedSM's VGG-11 selector, whose first classifier layer and its two Adam moments are 411 MB
each, a site held two to three extra 411 MB copies on top of its models while a result or a task was in flight.

:func:`split_arrays` replaces every C-contiguous array larger than ``piece_bytes`` by consecutive 1-D pieces
(views of the array: no copy) under ``<key>#piece<i>``, and returns the manifest ``{key: {"shape", "dtype",
"pieces"}}`` that travels in the DXO's meta under :data:`PIECES_META`; each piece is then its own item, so only
pieces are serialised and in flight. :func:`join_arrays` checks every piece against the manifest, then copies the
pieces of a key into one new array, releasing each piece as it is copied (the new array's pages become resident
while the pieces' are freed: no second full copy). The arrays come back bit-identical, in their places in the
dict. Anything malformed (a missing, extra, misshapen or mistyped piece, a bad manifest) raises
:class:`PieceError` naming the key, before anything is copied.

The DXO filters applying these to a job's messages: :class:`SplitLargeArrays` (a sender's filter) and
:class:`JoinLargeArrays` (a receiver's); the server joins its results in its result check
(:meth:`medfl.common.controller.RoundController._collect`), so a bad piece rejects the site's result.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, MutableMapping, Optional, Tuple

import numpy as np

from nvflare.apis.dxo import DXO
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

PIECES_META = "medfl.pieces"  # DXO meta key of the manifest
PIECE_TAG = "#piece"  # a piece's key: <key>#piece<i>
PIECE_BYTES = 64 * 2 ** 20  # default largest piece
NUMERIC_KINDS = "biufc"  # dtypes a manifest may name (no objects, strings or structured types)


class PieceError(ValueError):
    """A split array that cannot be put back together; the message names the key."""


def piece_key(key: str, index: int) -> str:
    return f"{key}{PIECE_TAG}{index}"


def split_arrays(params: Mapping[str, Any], piece_bytes: int = PIECE_BYTES) -> Tuple[Dict[str, Any], Dict[str, dict]]:
    """``params`` with every C-contiguous numpy array of more than ``piece_bytes`` bytes replaced, in its place, by
    views of at most ``piece_bytes`` bytes; and the manifest of the arrays split (empty: none). Other values are
    kept as they are; ``params`` itself is not changed."""
    if piece_bytes <= 0:
        raise ValueError(f"piece_bytes must be positive, got {piece_bytes}")
    out: Dict[str, Any] = {}
    manifest: Dict[str, dict] = {}
    for key, value in params.items():
        if not (isinstance(value, np.ndarray) and value.nbytes > piece_bytes and value.flags.c_contiguous
                and value.dtype.kind in NUMERIC_KINDS):
            out[key] = value
            continue
        flat = value.reshape(-1)  # a view: the array is C-contiguous
        step = max(1, piece_bytes // value.itemsize)
        starts = range(0, flat.size, step)
        for index, start in enumerate(starts):
            out[piece_key(key, index)] = flat[start:start + step]
        manifest[key] = {"shape": list(value.shape), "dtype": value.dtype.str, "pieces": len(starts)}
    return out, manifest


def _checked_entry(key: Any, entry: Any) -> Tuple[Tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, pieces)`` of one manifest entry, or :class:`PieceError`."""
    if not isinstance(key, str) or not isinstance(entry, Mapping):
        raise PieceError(f"the piece manifest's entry for {key!r} is not a key with a dict")
    shape, dtype, pieces = entry.get("shape"), entry.get("dtype"), entry.get("pieces")
    if not isinstance(shape, (list, tuple)) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                                       for n in shape):
        raise PieceError(f"{key}: the piece manifest gives shape {shape!r}, not a list of sizes")
    try:
        dtype = np.dtype(dtype) if isinstance(dtype, str) else None
    except (TypeError, ValueError):
        dtype = None
    if dtype is None or dtype.kind not in NUMERIC_KINDS or dtype.fields is not None:
        raise PieceError(f"{key}: the piece manifest gives dtype {entry.get('dtype')!r}, not a numeric dtype")
    if not isinstance(pieces, int) or isinstance(pieces, bool) or pieces < 1:
        raise PieceError(f"{key}: the piece manifest gives {pieces!r} pieces, not a positive count")
    return tuple(shape), dtype, pieces


def check_pieces(params: Mapping[str, Any], manifest: Any) -> Dict[str, Tuple[Tuple[int, ...], np.dtype, int]]:
    """The checked manifest ``{key: (shape, dtype, pieces)}``, or :class:`PieceError` naming the first key whose
    pieces in ``params`` do not rebuild it: each piece a 1-D array of the dtype, all there, none extra, their
    sizes summing to the shape's, and the key itself not also sent whole."""
    if not isinstance(manifest, Mapping):
        raise PieceError(f"the piece manifest is a {type(manifest).__name__}, not a dict")
    entries = {key: _checked_entry(key, entry) for key, entry in manifest.items()}
    expected = set()
    for key, (shape, dtype, pieces) in sorted(entries.items()):
        if key in params:
            raise PieceError(f"{key} was sent both whole and in pieces")
        total = 0
        for index in range(pieces):
            name = piece_key(key, index)
            piece = params.get(name)
            if not isinstance(piece, np.ndarray):
                what = "missing" if piece is None else f"a {type(piece).__name__}, not a numpy array"
                raise PieceError(f"{key}: piece {index} of {pieces} is {what}")
            if piece.ndim != 1 or piece.dtype != dtype:
                raise PieceError(f"{key}: piece {index} of {pieces} is a {piece.ndim}-D {piece.dtype} array, not a "
                                 f"1-D {dtype} one")
            total += piece.size
            expected.add(name)
        if total != math.prod(shape):
            raise PieceError(f"{key}: its {pieces} pieces hold {total} values, its shape {list(shape)} "
                             f"{math.prod(shape)}")
    extra = sorted(k for k in params if PIECE_TAG in k and k not in expected)
    if extra:
        raise PieceError(f"{extra[0]} is a piece of no array in the piece manifest")
    return entries


def join_arrays(params: MutableMapping[str, Any], manifest: Any) -> None:
    """Put the arrays of ``manifest`` (from :func:`split_arrays`) back together in ``params``, in place: each at its
    first piece's place, the pieces removed (released as they are copied unless the caller holds them). Raises
    :class:`PieceError` (see :func:`check_pieces`) before changing anything."""
    entries = check_pieces(params, manifest)
    firsts = {piece_key(key, 0): key for key in entries}
    joined: Dict[str, Any] = {}
    for name in list(params):
        if name in firsts:
            key = firsts[name]
            shape, dtype, pieces = entries[key]
            array = np.empty(shape, dtype=dtype)
            flat, start = array.reshape(-1), 0
            for index in range(pieces):
                piece = params.pop(piece_key(key, index))
                flat[start:start + piece.size] = piece
                start += piece.size
                del piece
            joined[key] = array
        elif name in params:  # not a piece already taken
            joined[name] = params.pop(name)
    params.update(joined)


class SplitLargeArrays(DXOFilter):
    """Filter (a sender's: the client's task results, the server's task data): cut every array larger than
    ``piece_bytes`` into pieces for the transfer (:func:`split_arrays`); the receiver puts them back together."""

    def __init__(self, piece_bytes: int = PIECE_BYTES):
        super().__init__(supported_data_kinds=None, data_kinds_to_filter=None)
        if not isinstance(piece_bytes, int) or piece_bytes <= 0:
            raise ValueError(f"piece_bytes must be a positive number of bytes, got {piece_bytes!r}")
        self.piece_bytes = piece_bytes

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> Optional[DXO]:
        if not isinstance(dxo.data, Mapping) or PIECES_META in dxo.meta:
            return None  # nothing to split, or split already (a task sent again)
        data, manifest = split_arrays(dxo.data, self.piece_bytes)
        if not manifest:
            return None
        self.log_debug(fl_ctx, f"sending {len(manifest)} arrays in pieces of at most {self.piece_bytes} bytes")
        # a new DXO: the server's task data is shared by the copies NVFlare makes per client
        return DXO(dxo.data_kind, data=data, meta={**dxo.meta, PIECES_META: manifest})


class JoinLargeArrays(DXOFilter):
    """Filter (a client's task data): put the arrays the server's :class:`SplitLargeArrays` cut back together
    (:func:`join_arrays`); a malformed piece fails the task, naming the key."""

    def __init__(self):
        super().__init__(supported_data_kinds=None, data_kinds_to_filter=None)

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> Optional[DXO]:
        if PIECES_META not in dxo.meta:
            return None
        try:
            join_arrays(dxo.data, dxo.meta.pop(PIECES_META))
        except PieceError as e:
            raise PieceError(f"the task data from the server: {e}") from None
        return dxo
