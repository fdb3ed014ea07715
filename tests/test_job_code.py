"""Every job ships the project's code (links into custom/), and a drifted copy is caught."""

import shutil

import pytest

from helpers import PROJECT_ROOT, run

import sys

sys.path.insert(0, str(PROJECT_ROOT / "tools"))
from sync_job_code import differences, job_dirs  # noqa: E402


def test_every_job_mirrors_custom():
    jobs = job_dirs()
    assert {j.name for j in jobs} >= {"fedavg_prostate", "fedsm_prostate"}
    problems = [p for job in jobs for p in differences(job)]
    assert not problems, "run `make sync`:\n" + "\n".join(problems)
    run([sys.executable, "tools/sync_job_code.py", "--check"])


@pytest.mark.parametrize("change", ["edit", "extra", "missing"])
def test_drifted_job_code_is_reported(tmp_path, change, monkeypatch):
    job = tmp_path / "jobs" / "fedavg_prostate"
    shutil.copytree(PROJECT_ROOT / "jobs" / "fedavg_prostate", job, symlinks=True)
    # keep relative links valid: point them at the real package
    for link in (job / "app" / "custom").rglob("*.py"):
        target = (PROJECT_ROOT / "jobs" / "fedavg_prostate" / link.relative_to(job)).resolve()
        link.unlink()
        link.symlink_to(target)
    executor = job / "app" / "custom" / "medfl" / "common" / "executor.py"
    if change == "edit":
        text = executor.read_text()
        executor.unlink()
        executor.write_text(text + "\n# local hotfix\n")
        expected = "a copy that differs from custom/medfl/common/executor.py"
    elif change == "extra":
        (executor.parent / "hotfix.py").write_text("x = 1\n")
        expected = "extra medfl/common/hotfix.py"
    else:
        executor.unlink()
        expected = "missing medfl/common/executor.py"
    assert any(expected in p for p in differences(job)), differences(job)


def test_every_job_polls_at_the_same_intervals():
    """The measured polling settings (docs/RESULTS.md, framework overhead) hold for every job, new ones included."""
    import json

    settings = {}
    for job in job_dirs():
        server = json.loads((job / "app" / "config" / "config_fed_server.json").read_text())
        periods = {w.get("args", {}).get("task_check_period") for w in server["workflows"]}
        settings[job.name] = (server.get("server", {}).get("task_request_interval"), periods)
    assert all(s == (0.2, {0.1}) for s in settings.values()), settings
