"""`mammodino demo`: its file plumbing (fast) and the whole pipeline at tiny sizes (slow)."""

from __future__ import annotations

import csv
import json

import pytest
from rich.console import Console

from helpers import write_csv
from mammodino.config import load_config
from mammodino.pipelines.demo import BACKBONES, run_demo, step_overrides
from mammodino.pipelines.demo_folder import DemoSettings
from mammodino.pipelines.demo_pretrain import PaceWatch
from mammodino.pipelines.demo_stages import TASKS, write_eval_cache, write_labels
from mammodino.report.demo_summary import runs_table, summary_table
from mammodino.report.runs import run_facts
from mammodino.settings import Settings
from mammodino.train.schedules import build_schedules


def test_eval_cache_keeps_ffdm_rows_and_links_the_images(tmp_path):
    cache = tmp_path / "cache"
    (cache / "images").mkdir(parents=True)
    (cache / "masks").mkdir()
    (cache / "images" / "a.png").write_bytes(b"x")
    rows = [
        {"id": "a", "image": "images/a.png", "slice_index": ""},
        {"id": "v-000", "image": "images/v-000.png", "slice_index": "0"},
        {"id": "v-001", "image": "images/v-001.png", "slice_index": "1"},
    ]
    write_csv(cache / "manifest.csv", rows)
    out = tmp_path / "cache-ffdm"
    write_eval_cache(cache, out)
    write_eval_cache(cache, out)  # a rerun keeps the links
    with (out / "manifest.csv").open() as fh:
        assert [r["id"] for r in csv.DictReader(fh)] == ["a"]
    assert (out / "images" / "a.png").read_bytes() == b"x"


def test_malignancy_is_left_out_for_lesion_free_breasts(tmp_path):
    src = tmp_path / "labels.csv"
    src.write_text("file,lesion_present,malignant\na,1,1\nb,1,0\nc,0,0\n")
    write_labels(src, tmp_path / "out.csv")
    with (tmp_path / "out.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["malignancy"] for r in rows] == ["1", "0", ""]


def test_summary_table_has_one_row_per_backbone(tmp_path):
    for backbone, value in (("random-init", 0.55), ("mammodino", 0.71)):
        out = tmp_path / "density" / backbone
        out.mkdir(parents=True)
        pooled = {"balanced_accuracy": {"value": value, "ci95": [0.5, 0.9]}}
        knn = {"balanced_accuracy": {"value": value - 0.2, "ci95": [0.1, 0.6]}}
        data = {"features": f"f/{backbone}", "task": "density", "class_counts": [5, 5, 5, 5]}
        data["protocols"] = {"logreg": {"1": {"pooled": pooled}}, "knn": {"1": {"pooled": knn}}}
        (out / "results.json").write_text(json.dumps(data))
    console = Console(width=250, record=True)
    console.print(summary_table(tmp_path))
    text = console.export_text()
    assert "density bal. acc. (logreg)" in text and "density bal. acc. (kNN)" in text
    lines = [ln for ln in text.splitlines() if "0." in ln]
    # logreg first, then kNN, for each backbone; chance level 1/4 under both density columns.
    assert "mammodino" in lines[0] and "0.710 [0.500, 0.900]" in lines[0]
    assert lines[0].index("0.710") < lines[0].index("0.510 [0.100, 0.600]")
    assert "random-init" in lines[1] and "0.550" in lines[1] and "0.350" in lines[1]
    assert "chance level" in lines[2] and lines[2].count("0.250") == 2
    assert "*" not in text and "position prior" not in text
    # A localization result adds its hit rate and, below chance level, the position prior's.
    loc = {"hit_rate": {"value": 0.42, "ci95": [0.3, 0.5]}, "hit_rate_chance": 0.105}
    loc["position_prior"] = {"hit_rate": 0.369, "patch_auroc": 0.759}
    (tmp_path / "localization" / "mammodino").mkdir(parents=True)
    (tmp_path / "localization" / "mammodino" / "results.json").write_text(
        json.dumps({"features": "f/mammodino", "localization": loc})
    )
    console = Console(width=250, record=True)
    console.print(summary_table(tmp_path))
    lines = [ln for ln in console.export_text().splitlines() if "0." in ln]
    last = [ln.strip("│ ").split("│")[-1].strip() for ln in lines]
    assert "mammodino" in lines[0] and last[0] == "0.420 [0.300, 0.500]"
    assert "chance level" in lines[2] and last[2] == "0.105"
    assert "position prior" in lines[3] and last[3] == "0.369"
    (tmp_path / "localization" / "mammodino" / "results.json").unlink()
    # eval's warning on random-init's kNN: its kNN cell is starred and the caption says why.
    data = json.loads((tmp_path / "density" / "random-init" / "results.json").read_text())
    data["warnings"] = ["kNN: the images' cls features are nearly identical"]
    (tmp_path / "density" / "random-init" / "results.json").write_text(json.dumps(data))
    console = Console(width=250, record=True)
    console.print(summary_table(tmp_path))
    text = console.export_text()
    row = next(ln for ln in text.splitlines() if "random-init" in ln)
    assert "0.350 [0.100, 0.600] *" in row and "0.550 [0.500, 0.900] *" not in row
    assert "* kNN on nearly identical features" in text


def test_demo_steps_are_fixed_and_curves_get_enough_points():
    steps, overrides = step_overrides(DemoSettings())
    assert steps == 400  # the preset's 40 epochs of 10 steps, whatever the machine
    assert "optim.max_steps=400" in overrides and "train.log_every=14" in overrides
    assert steps // 14 >= 20  # >= 20 points on every loss curve
    assert not any(o.startswith("optim.max_minutes") for o in overrides)
    steps, overrides = step_overrides(DemoSettings(steps=1000, precision="fp32"))
    assert steps == 1000 and "optim.steps_per_epoch=25" in overrides  # schedule rescaled
    assert "train.log_every=35" in overrides and "train.precision=fp32" in overrides


def test_demo_steps_off_whole_epochs_make_a_schedule_of_exactly_that_length():
    # 50 steps are no whole number of the preset's 40 epochs: one-step epochs, warm-ups scaled,
    # so the run ends at its schedule's end (judged by the end-of-run check), not stopped in it.
    steps, overrides = step_overrides(DemoSettings(steps=50))
    assert steps == 50
    assert "optim.epochs=50" in overrides and "optim.steps_per_epoch=1" in overrides
    s = Settings.from_config(load_config(preset="demo", overrides=overrides))
    sched = build_schedules(s.optim, s.teacher, global_batch=16)
    assert sched.total_steps == 50 == s.optim.max_steps
    # tiny-cpu's last layer is frozen 3 of 40 epochs: 3.75 of 50 steps, rounded to 4.
    assert (sched.last_layer_lr == 0).sum() == 4
    # lr warm-up 2 of 40 epochs: 2.5 steps, rounded half to even: the peak at step 2.
    assert sched.lr[2] == sched.lr.max() and sched.lr[1] < sched.lr[2]


def test_demo_embeds_at_the_side_its_backbones_trained_at():
    assert DemoSettings().embed_size() == 64  # configs/demo.yaml's crops.global_size
    assert DemoSettings(overrides=["crops.global_size=48"]).embed_size() == 48
    assert DemoSettings(image_size=32).embed_size() == 32


def test_demo_cli_rejects_a_non_positive_step_count(capsys):
    from mammodino.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--steps", "0"])
    assert exit_info.value.code == 2
    assert "positive whole number of steps" in capsys.readouterr().err


def _write_run(run, steps, log_every=5, batch=16, seconds_per_step=0.5):
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        f"data:\n  batch_size: {batch}\noptim:\n  accumulate_steps: 1\n"
    )
    lines = [json.dumps({"step": 0, "monitor/knn_acc": 0.3})]
    for step in range(log_every, steps + 1, log_every):
        rate = batch / seconds_per_step
        lines.append(json.dumps({"step": step, "loss": 10.0 - step / 100, "samples_per_s": rate}))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run


def test_run_facts_and_the_short_run_flag(tmp_path):
    long_run = _write_run(tmp_path / "mammodino", 140)
    short = _write_run(tmp_path / "dinov2-recipe", 5, log_every=1)
    facts = run_facts(long_run)
    assert (facts.steps, facts.images_seen, facts.curve_points) == (140, 2240, 28)
    assert facts.step_seconds == pytest.approx(70.0) and not facts.too_short
    assert run_facts(short).too_short and run_facts(tmp_path / "nothing") is None
    console = Console(width=200, record=True)
    console.print(runs_table([long_run, short]))
    lines = console.export_text().splitlines()
    assert any("mammodino" in ln and "140" in ln and "2,240" in ln for ln in lines)
    assert any("dinov2-recipe" in ln and "too short to compare" in ln for ln in lines)
    assert not any("mammodino" in ln and "too short" in ln for ln in lines)


def test_run_facts_name_a_config_without_the_batch_size(tmp_path):
    from mammodino.errors import ConfigError

    run = _write_run(tmp_path / "mammodino", 20)
    (run / "config.yaml").write_text("optim:\n  accumulate_steps: 1\n")
    with pytest.raises(ConfigError, match="config.yaml: no whole data.batch_size"):
        run_facts(run)
    (run / "config.yaml").unlink()  # no config at all: one image a step, as before
    assert run_facts(run).images_seen == 20


def test_report_states_steps_and_flags_a_short_run_in_red(tmp_path):
    from mammodino.report.build import build_report

    run = _write_run(tmp_path / "runs" / "mammodino", 140)
    baseline = _write_run(tmp_path / "runs" / "dinov2-recipe", 5, log_every=1)
    text = build_report(run, compare=[baseline]).read_text()
    assert "images seen" in text and "2,240" in text and "70 s" in text
    assert '<p class="warn">Too short to compare: dinov2-recipe (5 steps)' in text
    assert '<td class="warn">too short to compare</td>' in text
    assert "mammodino (140 steps)" not in text


def test_pace_watch_gives_one_eta_line_after_the_first_steps(tmp_path):
    run = _write_run(tmp_path / "run", 5, log_every=5)
    watch = PaceWatch(run / "metrics.jsonl", steps=140, runs_left=1)
    assert watch.check(now=100.0) is None  # first sighting: step 5
    _write_run(tmp_path / "run2", 15, log_every=5)
    (run / "metrics.jsonl").write_text((tmp_path / "run2" / "metrics.jsonl").read_text())
    line = watch.check(now=110.0)  # 10 steps in 10 s: 1 s/step, 125 + 140 steps to go
    assert line.startswith("1.00 s/step at step 15/140") and "about 4.4 min" in line
    assert "1 more run(s)" in line and "ETA" in line
    assert watch.check(now=120.0) is None  # said once


@pytest.mark.slow
def test_tiny_demo_runs_every_stage_and_resumes(tmp_path):
    settings = DemoSettings(
        n_ffdm=32,
        n_dbt=2,
        ffdm_shape=(96, 80),
        dbt_shape=(4, 64, 56),
        cache_size=64,
        steps=2,
        image_size=32,
        folds=2,
        n_boot=10,
        progress=False,
        overrides=[
            "crops.global_size=32",
            "crops.local_size=16",
            "crops.n_local=2",
            "model.patch_size=8",
            "data.batch_size=4",
            "heads.dino_out_dim=64",
            "heads.ibot_out_dim=64",
            "monitor.every=0",
            "train.precision=fp32",
        ],
    )
    demo = run_demo(tmp_path / "demo", settings, log=lambda _: None)
    eval_dir = demo.runs / "mammodino" / "eval"
    classified = 0
    for task in (*TASKS, "localization"):
        for backbone in BACKBONES:
            out = eval_dir / task / backbone
            if task != "localization" and (out / "skipped.json").is_file():
                continue  # 8 women in 2 folds may leave a class out of a training fold
            data = json.loads((out / "results.json").read_text())
            assert ("localization" in data) == (task == "localization")
            classified += task != "localization"
    assert classified >= len(BACKBONES)  # at least one task per backbone on average
    steps = [
        json.loads(line)["step"]
        for name in ("mammodino", "dinov2-recipe")
        for line in (demo.runs / name / "metrics.jsonl").read_text().splitlines()
    ]
    assert max(steps) == 2  # both runs: the fixed step count
    from mammodino.report.build import build_report

    runs = [demo.runs / "mammodino", demo.runs / "dinov2-recipe"]
    report = build_report(runs[0], output=tmp_path / "r.html", compare=runs[1:]).read_text()
    assert "Too short to compare: mammodino (2 steps), dinov2-recipe (2 steps)" in report
    baseline = (demo.runs / "dinov2-recipe" / "config.yaml").read_text()
    assert "sampler: random" in baseline and "slice_loss_weight: 0" in baseline
    again = run_demo(tmp_path / "demo", settings, log=lambda _: None)
    assert set(again.timings.values()) == {0.0}  # every stage skipped on a rerun


def test_demo_help_names_the_presets_step_count(capsys):
    from mammodino.cli import main

    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert f"default: the demo preset's {step_overrides(DemoSettings())[0]};" in help_text
