"""The annealing study's bookkeeping: paired gains and a choice made on validation scores only."""

import pytest
from annealing_study import main, summarize


def _rec(seed: int, steps: int, schedule: str, val_fd: float, eval_fd: float, channels: int = 8) -> dict:
    return {"seed": seed, "steps": steps, "channels": channels, "schedule": schedule, "val_fd": val_fd,
            "val_mse": 0.1, "eval_fd": eval_fd}


def test_choice_uses_validation_and_gains_are_paired():
    # cos_a is better on validation, cos_b on evaluation: the study must pick cos_a.
    records = []
    for s, base in enumerate((20.0, 30.0, 25.0)):  # seed-to-seed spread much larger than the gains
        records += [_rec(s, 1000, "reflow", base, base),
                    _rec(s, 1000, "cos_a", base - 2.0, base - (1.0 + s)),
                    _rec(s, 1000, "cos_b", base + 1.0, base - 5.0),
                    # another setting: its own baseline, its own choice
                    _rec(s, 1000, "reflow", base, base, channels=4), _rec(s, 1000, "cos_b", base - 1.0, base + 1.0, 4)]
    out = summarize(records)
    assert out["seeds"] == [0, 1, 2]
    row = next(r for r in out["rows"] if r["schedule"] == "cos_a")
    assert row["channels"] == 8
    assert row["eval_gain_per_seed"] == [1.0, 2.0, 3.0]
    assert row["eval_gain"] == pytest.approx(2.0) and row["eval_gain_sd"] == pytest.approx(1.0)
    assert row["val_gain"] == pytest.approx(2.0) and row["val_gain_sd"] == pytest.approx(0.0)
    assert row["eval_fd"] == pytest.approx(23.0) and row["eval_fd_sd"] == pytest.approx(21 ** 0.5)
    assert out["chosen_on_validation"]["1000 steps, 4 channels"]["seeds_holding"] == "0/3"
    chosen = out["chosen_on_validation"]["1000 steps, 8 channels"]
    assert chosen == {"schedule": "cos_a", "eval_gain": pytest.approx(2.0), "eval_gain_sd": pytest.approx(1.0),
                      "seeds_holding": "3/3", "beyond_one_sd": True}


def test_missing_baseline_is_an_error():
    with pytest.raises(ValueError, match="no plain-reflow baseline"):
        summarize([_rec(0, 1000, "cos_a", 1.0, 1.0)])


def test_demo_dir_without_runs_is_one_line(tmp_path, capsys):
    assert main(["--demo", str(tmp_path), "--out", str(tmp_path / "study")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fastflow demo --seeds" in err[0]
