"""The worker check and rq counts (labdeploy.jobs), without a server: judging what the probe
printed, reading counts, and the scripts' shape. The real runs are in the Dallinger e2e tests."""

from __future__ import annotations

import shlex

import pytest

from labdeploy.commands import jobs as commands
from labdeploy.watch import jobs


def test_a_finished_test_job_passes():
    jobs.judge_probe("@@status finished\n", "exp")


def test_a_failed_test_job_fails_the_check_with_its_traceback_and_a_fix():
    out = ("@@status failed\nTraceback (most recent call last):\n  ...\nTypeError: BaseWorker.perform_job() "
           "missing 1 required positional argument: 'execution'\n")
    with pytest.raises(jobs.WorkerNotRunningJobs) as info:
        jobs.judge_probe(out, "exp")
    assert "perform_job() missing 1 required positional argument" in info.value.message
    assert "generated Dockerfile" in info.value.hint


@pytest.mark.parametrize("out, words", [("@@status queued\n", "stay queued"), ("@@status no-worker\n", "not running"),
                                        ("ModuleNotFoundError: No module named 'rq'", "no answer")])
def test_a_job_that_never_ran_fails_the_check(out, words):
    with pytest.raises(jobs.WorkerNotRunningJobs, match=words):
        jobs.judge_probe(out, "exp")


def test_counts_are_read_per_app_and_queue():
    df = jobs.parse_counts("exp-a default 3 1 2 10 0 0\nexp-a high 0 0 0 1 0 0\nexp-b default 0 0 5 0 0 0\n"
                           "garbage line\n")
    assert list(df["app"]) == ["exp-a", "exp-a", "exp-b"]
    assert df.loc[2, "failed"] == 5 and df["queued"].dtype == "int64"


def test_no_rq_apps_give_an_empty_table_with_its_columns():
    df = jobs.parse_counts("")
    assert list(df.columns) == jobs.COUNT_COLUMNS and df.empty


def test_the_probe_finds_the_worker_by_its_labels_and_sends_no_secret():
    argv = commands.probe("exp-a", 12)
    assert argv[:3] == ["sh", "-c", commands.RUN_PROBE] and shlex.split(shlex.join(argv)) == argv
    assert argv[4:] == ["label=labdeploy.app=exp-a", commands.PROBE, "high", "12"]
    assert "label=labdeploy.service=worker" in commands.RUN_PROBE
    assert "REDIS_URL" in commands.PROBE and "redis://" in commands.PROBE  # read inside the container
    with pytest.raises(Exception):
        commands.probe("exp;rm -rf ~", 12)


def test_job_counts_sit_on_each_app_s_worker_row():
    import pandas as pd

    status = pd.DataFrame({"app": ["a", "a", "b", "b"], "service": ["web", "worker", "web", "worker"]})
    counts = jobs.parse_counts("a default 2 1 3 9 0 0\na high 1 0 0 4 0 0\n")
    out = jobs.attach(status, counts)
    assert out.loc[1, "jobs_queued"] == 3 and out.loc[1, "jobs_failed"] == 3
    assert out["jobs_queued"].isna().tolist() == [True, False, True, True]
