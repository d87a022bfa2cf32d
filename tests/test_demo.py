"""The demo's seed aggregation (formula on a hand-made case) and the optional demo runs over seeds,
end to end at a tiny budget."""

from __future__ import annotations

import json
import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastflow.metrics.evaluate import aggregate_rows, mean_sd
from fastflow.utils.table import format_table


def test_aggregate_rows_means_and_sample_sds() -> None:
    runs = [[{"method": "a", "tau": 0.5, "psnr": 20.0, "NFE": 1, "ok": True, "note": "x", "same": 0.1}],
            [{"method": "a", "tau": 0.5, "psnr": 23.0, "NFE": 3, "ok": False, "note": "y", "same": 0.1}],
            [{"method": "a", "tau": 0.5, "psnr": 26.0, "NFE": 2, "ok": True, "note": "z", "same": 0.1}]]
    (row,) = aggregate_rows(runs, ("method", "tau"))
    assert row["method"] == "a" and row["tau"] == 0.5  # keys kept, not averaged
    assert row["psnr"] == pytest.approx(23.0) and row["psnr_sd"] == pytest.approx(3.0)  # sample sd (ddof 1)
    assert row["NFE"] == pytest.approx(2.0) and row["NFE_sd"] == pytest.approx(1.0)
    assert "ok" not in row and "note" not in row  # booleans and text are not averaged
    assert row["same"] == 0.1 and row["same_sd"] == 0.0  # exactly, not the rounding of a mean
    assert format_table([row], ["method", "psnr"]).splitlines()[-1] == "a       23 ± 3"
    assert all(math.isnan(v) for v in mean_sd([1.0, float("nan")]))  # a NaN seed is never hidden
    (one,) = aggregate_rows(runs[:1], ("method",))
    assert one["psnr"] == 20.0 and one["psnr_sd"] == 0.0
    with pytest.raises(ValueError, match="disagree"):
        aggregate_rows([runs[0], [{**runs[1][0], "tau": 0.9}]], ("method", "tau"))
    with pytest.raises(ValueError, match="numbers of rows"):
        aggregate_rows([runs[0], runs[1] * 2], ("method",))


def test_over_seeds_in_worker_processes_equals_serial(tmp_path) -> None:
    """``--jobs``: the seeds run in spawned worker processes and aggregate exactly as run one by one."""
    import os

    from helpers import seeded_run

    from fastflow.recipes.stages import over_seeds

    serial = over_seeds(seeded_run, tmp_path, [0, 1, 2], 2.0, ("method",))
    parallel = over_seeds(seeded_run, tmp_path, [0, 1, 2], 2.0, ("method",), jobs=2)
    assert {r["pid"] for r in serial["per_seed"].values()} == {os.getpid()}
    assert os.getpid() not in {r["pid"] for r in parallel["per_seed"].values()}
    assert parallel["rows"] == serial["rows"] and parallel["checks"] == serial["checks"] == {"positive": 3}
    assert [r["rows"] for r in parallel["per_seed"].values()] == [r["rows"] for r in serial["per_seed"].values()]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed-0", "seed-1", "seed-2"]


def test_meanflow_budget_fills_the_route_time() -> None:
    """The step count from the probe: start-up = the probe's time outside its logged steps, paid
    once more by the resumed run; the steady step time is the last interval's."""
    from fastflow.errors import ConfigError
    from fastflow.recipes.meanflow import fill_budget

    records = [{"step": 50, "cpu_s_per_step": 0.2}, {"step": 100, "cpu_s_per_step": 0.1}]
    plan = fill_budget(100.0, 100, 25.0, records)  # 15 s in steps, 10 s start-up
    assert plan["startup_s"] == pytest.approx(10.0) and plan["probe_s_per_step"] == 0.1
    assert plan["steps"] == 100 + int((100 - 25 - 10) / 0.1)
    spent = plan["probe_s"] + plan["startup_s"] + (plan["steps"] - 100) * plan["probe_s_per_step"]
    assert spent == pytest.approx(100.0, abs=0.1)
    assert fill_budget(20.0, 100, 25.0, records)["steps"] == 100  # the probe already spent it
    with pytest.raises(ConfigError, match="logged no steps"):
        fill_budget(100.0, 100, 25.0, [])


def test_meanflow_budget_is_topped_up_from_the_time_spent() -> None:
    """A probe timed on a busy machine under-spends: the next segment's own step time and the CPU
    seconds actually spent extend the run until less than FILL_TOLERANCE of the budget is left."""
    from fastflow.recipes.meanflow import MAX_TOP_UPS, fill_budget, top_up

    plan = fill_budget(100.0, 100, 25.0, [{"step": 50, "cpu_s_per_step": 0.2}, {"step": 100, "cpu_s_per_step": 0.1}])
    assert plan["segments"] == [750]
    records = [{"step": s, "cpu_s_per_step": 0.05} for s in range(150, 751, 50)]  # the segment ran twice as fast
    spent = 25.0 + 10.0 + 650 * 0.05  # probe, start-up, the segment
    plan = top_up(plan, spent, records)
    assert plan["steps"] == 750 + int((100.0 - spent - 10.0) / 0.05) and plan["segments"] == [750, plan["steps"]]
    filled = top_up(plan, 99.0, records)  # 1 % left: filled
    assert filled["filled"] and filled["spent_s"] == 99.0 and filled["steps"] == plan["steps"]
    many = {**plan, "segments": list(range(MAX_TOP_UPS + 2))}
    assert top_up(many, 50.0, records)["filled"]  # at most MAX_TOP_UPS extensions


@pytest.mark.slow  # the SlimFlow+MeanFlow end-to-end run covers --seeds in make test
def test_demo_conditional_and_sr_over_two_seeds(tmp_path, monkeypatch, capsys) -> None:
    """``fastflow demo --skip-main --conditional --sr --seeds 2`` at a tiny budget: each seed trains
    and scores its own models, and the aggregate rows are the per-seed mean ± sd."""
    from fastflow.cli.main import main
    from fastflow.recipes import digits, oftsr

    monkeypatch.setattr(digits, "N_EVAL", 40)
    monkeypatch.setattr(oftsr, "N_EVAL", 8)
    out = tmp_path / "demo"
    assert main(["demo", "--skip-main", "--conditional", "--sr", "--seeds", "2", "--scale", "0.002",
                 "--out", str(out), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    for part, key, last in (("conditional", "digits FD", "one-step (FGD)"), ("sr", "psnr", "teacher Euler 32")):
        res = json.loads((out / part / "results-seeds.json").read_text())
        assert res["seeds"] == [0, 1] and set(res["per_seed"]) == {"0", "1"}
        runs = [res["per_seed"][s]["rows"] for s in ("0", "1")]
        assert [r["seed"] for r in res["per_seed"].values()] == [0, 1]
        a, b = (next(r[key] for r in run if r["method"] == last) for run in runs)
        assert a != b  # the seed reaches training and sampling
        for i, row in enumerate(res["rows"]):
            values = [run[i][key] for run in runs]
            assert row[key] == pytest.approx(statistics.mean(values))
            assert row[f"{key}_sd"] == pytest.approx(statistics.stdev(values))
        assert all(0 <= n <= 2 for n in res["checks"].values())
        assert (out / part / "seed-1" / "results.json").is_file()

    cond = json.loads((out / "conditional" / "results-seeds.json").read_text())
    assert len(cond["orderings"]) == 3
    for claim in cond["orderings"]:  # the paired table and the per-seed checks count the same seeds
        assert claim["seeds holding"] == f"{cond['checks'][claim['claim']]}/2"
    fd = {s: {(r["method"], r["solver"], r["CFG α"]): r["digits FD"] for r in run["rows"]}
          for s, run in cond["per_seed"].items()}
    gains = [fd[s][("1-RF teacher", "rk45", 2.0)] - fd[s][("one-step (FGD)", "euler 1", 1.0)] for s in ("0", "1")]
    rk45 = next(c for c in cond["orderings"] if "RK45" in c["claim"])
    assert rk45["paired gain"] == f"{statistics.mean(gains):.2f} ± {statistics.stdev(gains):.2f}"
    sr = json.loads((out / "sr" / "results-seeds.json").read_text())
    gaps = [
        next(r["psnr"] for r in sr["per_seed"][s]["rows"] if r["tau"] == 0.99)
        - next(r["psnr"] for r in sr["per_seed"][s]["rows"] if r["method"] == "teacher Euler 32")
        for s in ("0", "1")
    ]
    assert sr["student τ≈1 − teacher PSNR (dB)"] == pytest.approx([statistics.mean(gaps), statistics.stdev(gaps)])
    assert (out / "sr" / "tau_sweep.png").is_file() and (out / "sr" / "seed-0" / "strip.png").is_file()
    assert "InstaFlow on class-conditioned digits" in printed and " ± " in printed and "/2] " in printed


def test_demo_slimflow_and_meanflow_end_to_end(tmp_path, monkeypatch, capsys) -> None:
    """``fastflow demo --methods slimflow,meanflow --seeds 2`` at a tiny budget: every stage runs, the
    table carries every model × solver and the ONNX row, the run's checks and straightness are
    reported, the figures and the exported generator are written; each seed's MeanFlow trains for
    that seed's recorded route time, right after it, and both routes aggregate over the seeds."""
    from fastflow.cli.main import main
    from fastflow.recipes import digits, meanflow, slimflow

    monkeypatch.setattr(digits, "N_EVAL", 40)
    route = meanflow.route_budget
    monkeypatch.setattr(meanflow, "route_budget", lambda d: 0.01 * route(d))  # the suite's time: 1 % of it
    out = tmp_path / "demo"
    # eager: compiling the four stage graphs would cost CI minutes (train.compile is tested in test_train_accel)
    assert main(["demo", "--methods", "slimflow,meanflow", "--seeds", "2", "--scale", "0.002", "--out", str(out),
                 "--threads", "1", "--compile", "off"]) == 0
    res = json.loads((out / "seed-1" / "results.json").read_text())
    rows = [(r["method"], r["solver"]) for r in res["rows"]]
    assert rows == [(m, f"{s} {n}" if n else s) for m, plan in slimflow.PLAN.items() for s, n in plan] + [
        ("distilled (FGD), ONNX Runtime", "euler 1")]
    assert set(res["checks"]) >= {claim for claim, _, _ in slimflow.ORDERINGS} | {
        "ONNX export validates against PyTorch"
    }
    assert set(res["straightness"]) == {slimflow.TEACHER, slimflow.PLAIN, slimflow.ANNEAL}
    for name in ("samples.png", "grid_fgd.png", "grid_teacher_rk45.png", "latency_vs_nfe.png", "student_fgd.onnx"):
        assert (out / "seed-1" / name).is_file()
    printed = capsys.readouterr().out
    assert "SlimFlow on digits, 40 samples per row" in printed and "MeanFlow vs the SlimFlow route" in printed
    # SlimFlow then MeanFlow per seed: seed 0's MeanFlow finished before seed 1's teacher started.
    assert (out / "seed-0" / "meanflow" / "results.json").stat().st_mtime < \
        (out / "seed-1" / "teacher-1rf" / "config.yaml").stat().st_mtime
    for seed in (0, 1):
        timing = json.loads((out / f"seed-{seed}" / "timing.json").read_text())
        assert set(slimflow.ROUTE) <= set(timing) and all(v > 0 for v in timing.values())
        mf = json.loads((out / f"seed-{seed}" / "meanflow" / "results.json").read_text())
        assert mf["budget"]["budget_s"] == pytest.approx(0.01 * sum(timing[s] for s in slimflow.ROUTE))
        assert mf["budget"]["steps"] >= mf["budget"]["probe_steps"] and mf["budget"]["train_s"] > 0
        assert [(r["method"], r["solver"]) for r in mf["rows"]] == [
            (meanflow.MEANFLOW, "euler 1"), (meanflow.MEANFLOW, "euler 2"), (slimflow.FGD, "euler 1"),
            (slimflow.ANNEAL, "euler 2")]
        assert set(mf["checks"]) == {claim for claim, _, _ in meanflow.ORDERINGS}
        assert (out / f"seed-{seed}" / "meanflow" / "grid_meanflow.png").is_file()
    for path in (out / "results-seeds.json", out / "meanflow" / "results-seeds.json"):
        agg = json.loads(path.read_text())
        assert agg["seeds"] == [0, 1] and set(agg["per_seed"]) == {"0", "1"} and all(" ± " not in k for k in agg)


def test_demo_sr_refuses_a_bad_lpips_backbone_before_training(tmp_path, monkeypatch, capsys) -> None:
    from fastflow.cli.main import main
    from fastflow.objectives.lpips_distance import ENV

    monkeypatch.setenv(ENV, str(tmp_path / "missing-vgg16.pth"))
    assert main(["demo", "--skip-main", "--sr", "--out", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lpips" in err.lower() and "Traceback" not in err
    assert not (tmp_path / "demo" / "sr" / "teacher").exists()  # nothing trained


def test_execution_of_the_demo_stages(tmp_path) -> None:
    """The demo's default runs compiled (MeanFlow, which cannot, eager), bf16 where the CPU has it, the
    inference kernels for teachers; the CPU kernel cannot be the trained networks' path."""
    from fastflow.errors import ConfigError
    from fastflow.recipes.stages import EAGER, Execution
    from fastflow.train.accel import cpu_bf16

    fast = Execution.fastest()
    assert fast == Execution("model", "bf16" if cpu_bf16()[0] else "none", "auto")
    assert fast.overrides({"name": "fgd", "teacher": "x"}) == [
        "train.compile=model", f"train.amp={fast.amp}", "model.fused=auto"]
    assert fast.overrides({"name": "meanflow"})[0] == "train.compile=off"
    assert EAGER.overrides({"name": "rf"}) == ["train.compile=off", "train.amp=none", "model.fused=auto"]
    with pytest.raises(ConfigError, match="inference-only"):
        Execution(fused="cpu")


@settings(max_examples=40, deadline=None)
@given(compile_=st.text(max_size=8), amp=st.text(max_size=8), fused=st.text(max_size=8))
def test_demo_execution_flags_property(compile_: str, amp: str, fused: str) -> None:
    """Any ``--compile/--amp/--fused`` text: a valid execution, or argparse's exit 2 / a ConfigError."""
    import argparse

    from fastflow.cli import demo as demo_cli
    from fastflow.errors import ConfigError

    parser = argparse.ArgumentParser(exit_on_error=False)
    demo_cli.add_parser(parser.add_subparsers())
    try:
        args = parser.parse_args(["demo", f"--compile={compile_}", f"--amp={amp}", f"--fused={fused}"])
        ex = demo_cli.execution(args)
    except (SystemExit, argparse.ArgumentError, ConfigError):
        return
    assert (ex.compile, ex.amp) == (compile_, amp) and ex.fused in ("auto", "off", "triton")
