"""The medfl version a job needs, and the check every site makes before round 0.

A job names the medfl version it was written for in its ``meta.json`` (:data:`MEDFL_VERSION_KEY`, e.g.
``"medfl_version": "0.5.0"``). NVFlare keeps top-level meta keys through submission and gives every site the job's
meta (``FLContextKey.JOB_META``), so the server's workflow and every client compare it with the medfl they loaded
and refuse the job, naming both versions, when they differ. The loaded medfl is the installed package for a job
of configuration only, or the copy a BYOC job carries in ``app/custom`` (:mod:`medfl.byoc` writes that copy's
version into the job). A job without the key is refused too: nothing would tell the site which code it was
written for, and running another version's classes on its configuration is the silent failure this check exists
to prevent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import medfl

MEDFL_VERSION_KEY = "medfl_version"


def loaded_medfl() -> str:
    """``medfl <version> from <folder>``: the medfl this process runs, and where it was imported from."""
    return f"medfl {medfl.__version__} from {Path(medfl.__file__).resolve().parent}"


def version_problem(job_meta: Optional[Mapping]) -> Optional[str]:
    """Why this site must refuse a job with meta ``job_meta`` (``None`` when its medfl version is the one loaded)."""
    running = medfl.__version__
    required = (job_meta or {}).get(MEDFL_VERSION_KEY)
    if required is None:
        return (f"the job's meta.json names no '{MEDFL_VERSION_KEY}', so this site cannot check that it runs the "
                f"medfl the job was written for; add \"{MEDFL_VERSION_KEY}\": \"<version>\" to it (this site runs "
                f"{loaded_medfl()})")
    if str(required) != running:
        return (f"the job needs medfl {required} (meta.json '{MEDFL_VERSION_KEY}'), but this site runs "
                f"{loaded_medfl()}; install medfl=={required} at this site, or submit the job made for {running}")
    return None
