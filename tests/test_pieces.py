"""Large arrays cut into pieces for their transfer and put back together (medfl.common.pieces, issue 16 item 7).

Bit-identical round trips, pieces as views of the sent arrays, the dict's order kept, every malformed piece
refused naming its key before anything changes, and the filter pair on NVFlare Shareables (the server's shared
task data left untouched). The server's rejection of a bad piece, by site and key, and a run whose results all
travel in pieces: tests/test_rejected_results.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_context import FLContext

from medfl.common.pieces import (
    PIECES_META,
    JoinLargeArrays,
    PieceError,
    SplitLargeArrays,
    check_pieces,
    join_arrays,
    split_arrays,
)


def arrays() -> dict:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((7, 13)).astype(np.float32)
    weight.flat[:4] = [np.nan, -0.0, np.inf, np.float32(1e-45)]  # bits that value comparisons would hide
    return {"a/small": np.arange(3, dtype=np.float32), "a/weight": weight,
            "a/count": np.array(5, dtype=np.int64), "b/ints": np.arange(100, dtype=np.int64).reshape(4, 25),
            "b/double": rng.standard_normal(33), "b/transposed": rng.standard_normal((9, 8)).astype(np.float32).T}


def test_split_then_join_is_bit_identical_in_order_and_splits_only_large_contiguous_arrays():
    original = arrays()
    sent = {k: np.copy(v) for k, v in original.items()}  # layouts kept (the transposed one F-ordered)
    pieces, manifest = split_arrays(sent, piece_bytes=40)
    assert sorted(manifest) == ["a/weight", "b/double", "b/ints"]  # small, 0-d and non-contiguous stay whole
    assert manifest["a/weight"] == {"shape": [7, 13], "dtype": "<f4", "pieces": 10}  # 91 values, 10 per piece
    assert all(v.nbytes <= 40 for k, v in pieces.items() if "#piece" in k)
    assert all(np.shares_memory(pieces[f"{k}#piece0"], sent[k]) for k in manifest)  # views: no copy
    assert list(sent) == list(original)  # the input is left as it was
    join_arrays(pieces, manifest)
    assert list(pieces) == list(original)
    for key, value in original.items():
        assert pieces[key].dtype == value.dtype and pieces[key].shape == value.shape
        assert pieces[key].tobytes() == value.tobytes(), key
    assert all(pieces[k].flags.c_contiguous and pieces[k].flags.writeable for k in manifest)  # as adopt_numpy needs


def test_join_builds_new_arrays_and_drops_the_pieces():
    pieces, manifest = split_arrays({"w": np.ones(100, np.float32)}, piece_bytes=100)
    received = {k: v.copy() for k, v in pieces.items()}  # as a download hands them over
    kept = received["w#piece1"]
    join_arrays(received, manifest)
    assert list(received) == ["w"] and not np.shares_memory(received["w"], kept)


def test_nothing_large_means_no_manifest():
    pieces, manifest = split_arrays({"w": np.ones(4, np.float32)}, piece_bytes=64)
    assert manifest == {} and list(pieces) == ["w"]
    with pytest.raises(ValueError, match="piece_bytes must be positive"):
        split_arrays({}, piece_bytes=0)


def split(piece_bytes=16):
    return split_arrays({"w": np.arange(10, dtype=np.float32), "v": np.ones(2, np.float32)}, piece_bytes)


@pytest.mark.parametrize("damage, reason", [
    (lambda p, m: p.pop("w#piece1"), r"^w: piece 1 of 3 is missing$"),
    (lambda p, m: p.update({"w#piece0": [0.0] * 4}), r"^w: piece 0 of 3 is a list, not a numpy array$"),
    (lambda p, m: p.update({"w#piece0": p["w#piece0"].astype(np.float64)}),
     r"^w: piece 0 of 3 is a 1-D float64 array, not a 1-D float32 one$"),
    (lambda p, m: p.update({"w#piece2": p["w#piece2"][:1]}), r"^w: its 3 pieces hold 9 values, its shape \[10\] 10$"),
    (lambda p, m: p.update({"w#piece3": np.zeros(1, np.float32)}), r"^w#piece3 is a piece of no array"),
    (lambda p, m: p.update({"w": np.zeros(10, np.float32)}), r"^w was sent both whole and in pieces$"),
    (lambda p, m: m["w"].update(pieces=2), r"^w: its 2 pieces hold 8 values, its shape \[10\] 10$"),
    (lambda p, m: m["w"].update(pieces=0), r"^w: the piece manifest gives 0 pieces, not a positive count$"),
    (lambda p, m: m["w"].update(shape=[10.0]), r"^w: the piece manifest gives shape \[10.0\], not a list of sizes$"),
    (lambda p, m: m["w"].update(shape=[-10]), r"^w: the piece manifest gives shape \[-10\]"),
    (lambda p, m: m["w"].update(dtype="O"), r"^w: the piece manifest gives dtype 'O', not a numeric dtype$"),
    (lambda p, m: m["w"].update(dtype="no such type"), r"^w: the piece manifest gives dtype 'no such type'"),
    (lambda p, m: m["w"].update(dtype="f4,i4"), r"^w: the piece manifest gives dtype 'f4,i4'"),
    (lambda p, m: m.update({"u": "x"}), r"^the piece manifest's entry for 'u' is not a key with a dict$"),
])
def test_a_malformed_piece_is_refused_naming_its_key_and_changes_nothing(damage, reason):
    pieces, manifest = split()
    damage(pieces, manifest)
    before = dict(pieces)
    with pytest.raises(PieceError, match=reason):
        join_arrays(pieces, manifest)
    assert pieces == before or all(pieces[k] is v for k, v in before.items())


def test_a_manifest_that_is_not_a_dict_is_refused():
    with pytest.raises(PieceError, match="the piece manifest is a list, not a dict"):
        check_pieces({}, [])


def test_the_filter_pair_round_trips_a_shareable_without_touching_the_senders_data():
    data = arrays()
    task = DXO(DataKind.WEIGHTS, data=data, meta={"round": 3}).to_shareable()
    shared_data, shared_meta = from_shareable(task).data, from_shareable(task).meta
    sent = SplitLargeArrays(piece_bytes=40).process(task, FLContext())
    dxo = from_shareable(sent)
    assert PIECES_META in dxo.meta and "a/weight#piece9" in dxo.data
    assert shared_data is data and list(shared_data) == list(arrays()) and PIECES_META not in shared_meta
    assert from_shareable(SplitLargeArrays(piece_bytes=40).process(sent, FLContext())).data == dxo.data  # once only
    received = from_shareable(JoinLargeArrays().process(sent, FLContext()))
    assert PIECES_META not in received.meta and received.meta["round"] == 3
    assert list(received.data) == list(data)
    assert all(received.data[k].tobytes() == v.tobytes() for k, v in arrays().items())


def test_the_join_filter_names_the_server_and_passes_unsplit_data():
    dxo = DXO(DataKind.WEIGHTS, data={"w#piece0": np.zeros(1, np.float32)}, meta={PIECES_META: {}})
    with pytest.raises(PieceError, match=r"^the task data from the server: w#piece0 is a piece of no array"):
        JoinLargeArrays().process(dxo.to_shareable(), FLContext())
    plain = DXO(DataKind.WEIGHTS, data={"w": np.zeros(1, np.float32)}).to_shareable()
    assert list(from_shareable(JoinLargeArrays().process(plain, FLContext())).data) == ["w"]
    with pytest.raises(ValueError, match="piece_bytes must be a positive number of bytes"):
        SplitLargeArrays(piece_bytes=0)
