"""A client's state between rounds on disk, so that a resumed run (``resume_from``) continues exactly.

After each training round whose result it has sent, a client writes what it carries into its next round
(:meth:`~medfl.common.executor.RoundExecutor.persistent_state`) atomically to
``<state_dir>/<run_id>/<site>/round_<r>.pt`` and keeps that file and the newest older one. ``run_id`` is the
server's id of the run, kept in its ``server_state.pt``, so a resumed run finds the files of the run it continues.
The file holds ``{"run_id", "site", "round", "state"}`` with tensors for arrays (it loads with
``weights_only=True``). A file that is missing, unreadable, or of another run, site or round is a
:class:`~medfl.common.errors.DataError` naming the site and the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict

from .errors import DataError
from .io import atomic_torch_save, load_torch_file

RUN_ID_PATTERN = re.compile(r"[0-9a-f]{32}")  # uuid4().hex
ROUND_FILE = re.compile(r"round_(\d+)\.pt")


def state_folder(state_dir: Path, run_id: str, site: str) -> Path:
    """``<state_dir>/<run_id>/<site>``; ``DataError`` unless ``run_id`` is a server's run id (32 hex digits)."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
        raise DataError(f"the server sent the run id {run_id!r}, not 32 hex digits", site=site)
    return Path(state_dir) / run_id / site


def round_file(folder: Path, round_number: int) -> Path:
    return folder / f"round_{round_number}.pt"


def write_client_state(folder: Path, run_id: str, site: str, round_number: int, state: Dict[str, Any]) -> Path:
    """Write ``state`` as round ``round_number``'s file (atomically); keep it and the newest older round's, delete
    the rest (newer ones are of rounds a resumed run trains again). Returns the file."""
    path = round_file(folder, round_number)
    atomic_torch_save({"run_id": run_id, "site": site, "round": round_number, "state": state}, path)
    rounds = sorted(int(m.group(1)) for m in map(ROUND_FILE.fullmatch, (p.name for p in folder.iterdir())) if m)
    older = [r for r in rounds if r < round_number]
    keep = {round_number, *older[-1:]}
    for r in rounds:
        if r not in keep:
            round_file(folder, r).unlink(missing_ok=True)
    return path


def read_client_state(folder: Path, run_id: str, site: str, round_number: int) -> Dict[str, Any]:
    """The ``state`` that :func:`write_client_state` wrote for ``round_number``, or a ``DataError`` naming the
    site, the file and what is wrong with it."""
    path = round_file(folder, round_number)

    def error(problem: str) -> DataError:
        return DataError(f"cannot resume exactly: {problem}", path=path, site=site)

    if not path.is_file():
        raise error(f"no state of round {round_number} (the client's state_dir of the run being resumed is expected; "
                    "the simulator empties its workspace, so set state_dir outside it)")
    try:
        saved = load_torch_file(path)
    except ValueError as e:
        raise error(f"not a readable torch file ({e})") from None
    expected = {"run_id": run_id, "site": site, "round": round_number}
    if not isinstance(saved, dict) or "state" not in saved or any(saved.get(k) != v for k, v in expected.items()):
        found = {k: saved.get(k) for k in expected} if isinstance(saved, dict) else type(saved).__name__
        raise error(f"not the client state of {expected} (found {found})")
    return saved["state"]
