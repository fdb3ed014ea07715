"""One exception type for bad input, with a message that names the site, the file and the problem."""

from __future__ import annotations

from os import PathLike
from typing import Optional, Union


class DataError(ValueError):
    """Bad or missing input data.

    The message reads ``[site] path: problem`` so that a log line from any site tells the user which file
    to fix and why, without a traceback.
    """

    def __init__(self, problem: str, path: Union[str, PathLike, None] = None, site: Optional[str] = None):
        self.problem = problem
        self.path = None if path is None else str(path)
        self.site = site
        where = " ".join(part for part in (f"[{site}]" if site else "", f"{self.path}:" if self.path else "") if part)
        super().__init__(f"{where} {problem}".strip())
