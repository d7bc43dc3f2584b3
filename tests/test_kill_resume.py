"""Kill and resume (issue 9): SIGKILL a tiny `mammodino pretrain` at seeded random moments, resume
with --resume, finish with the weights of an uninterrupted run; `last.pt` loads after every kill.
`mammodino prepare` killed and rerun writes the manifest of one clean run, with no duplicates.
Helpers and the 10-kill version: benchmarks/kill_resume.py.
"""

from __future__ import annotations

import pytest

from helpers import load_benchmark

kr = load_benchmark("kill_resume")


@pytest.mark.slow
@pytest.mark.multiproc
def test_pretrain_killed_three_times_resumes_to_identical_weights(tmp_path):
    # 16 steps and kills within 0.3 s of progress: on a fast idle machine 8 steps with up to 1 s
    # of wait sometimes finished before the third kill landed.
    trial = kr.kill_resume_trial(tmp_path, kills=3, steps=16, seed=0, max_wait=0.3)
    assert trial["kills"] == 3
    assert trial["last_loadable_after_every_kill"], trial["last_steps"]
    assert trial["final_step"] == 16
    assert trial["metrics_steps_unique"]
    assert trial["weights_equal"]


@pytest.mark.slow
@pytest.mark.multiproc
def test_prepare_killed_and_rerun_gives_the_clean_manifest(tmp_path):
    result = kr.prepare_kill_trial(tmp_path, kills=2, seed=0)
    assert result["kills"] >= 1
    assert result["manifest_equal"]
    assert result["duplicates"] == 0
    assert result["rows"] == 200
    assert result["images_equal"]
