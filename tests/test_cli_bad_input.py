"""Every probe of the bad-input review (issue 14) and more: each gives one line on stderr, exit 2,
no traceback, and leaves no file behind (a directory an output was checked in may remain).

The CLIs run in-process (``main(argv)``: the same parser and error boundary as the console
scripts, without a torch import per probe); ``test_console_scripts_share_the_boundary`` runs two
probes through real subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_DIGITS, run_cli
from PIL import Image

from fastflow.cli import export as export_cli
from fastflow.cli import main as fastflow_cli
from fastflow.models import build_model, save_model
from fastflow.pairs import CallableTeacher, generate_pairs
from fastflow.train import load_config, train
from fastflow.utils.io import file_digest

SR = ["model.arch=unet", "model.in_channels=1", "model.cond_channels=1", "model.resolution=16", "model.channels=8",
      "model.ch_mult=[1,2]", "model.num_res_blocks=1", "model.attn_resolutions=[8]",
      "data={name: sr, source: digits, scale: 2}", "train.batch_size=8", "train.progress=false",
      "train.tensorboard=false", "train.steps=1", "train.sample_n=2", "train.sample_steps=1"]
TRAIN = ["train", "{s}/tiny.yaml", *TINY_DIGITS, "train.steps=2"]  # the fixture's runs: same model


def _flip(path: Path, where: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[min(len(data) - 1, int(where * len(data)))] ^= 0x40
    path.write_bytes(bytes(data))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


@pytest.fixture(scope="module")
def box(tmp_path_factory) -> Path:
    """Read-only inputs for every probe: checkpoints, runs and files broken in one way each."""
    s = tmp_path_factory.mktemp("probes")
    torch.manual_seed(0)
    save_model(s / "ck", build_model({"preset": "digits-small"}), build_model({"preset": "digits-small"}))
    _flip(_copy(s / "ck", s / "ck_flipped") / "ema.safetensors")
    data = (_copy(s / "ck", s / "ck_truncated") / "model.safetensors").read_bytes()
    (s / "ck_truncated" / "model.safetensors").write_bytes(data[:100])
    save_model(s / "ck_cond", build_model({"preset": "digits-small", "num_classes": 10}))
    train(load_config(None, [*TINY_DIGITS, "train.steps=2", f"out_dir={s / 'run'}"]))
    (_copy(s / "run", s / "run_binlatest") / "checkpoints" / "latest").write_bytes(bytes(range(256)))
    loop = _copy(s / "run", s / "run_loop") / "checkpoints"
    shutil.rmtree(loop)
    loop.symlink_to(loop)
    ckpt = _copy(s / "run", s / "run_flipped") / "checkpoints" / "step-00000002"
    _flip(ckpt / "state.pt")
    ckpt = _copy(s / "run", s / "run_pickle") / "checkpoints" / "step-00000002"
    torch.save({"step": 2, "evil": __import__("argparse").Namespace()}, ckpt / "state.pt")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["sha256"]["state.pt"] = file_digest(ckpt / "state.pt")  # the digest matches: the unpickler refuses
    (ckpt / "config.json").write_text(json.dumps(cfg))
    teacher = train(load_config(None, [*SR, f"out_dir={s / 'sr_t'}", "objective={name: sr}"]))
    train(load_config(None, [*SR, f"out_dir={s / 'sr'}", f"objective={{name: oftsr, teacher: '{teacher}'}}"]))
    _flip(_copy(s / "sr", s / "sr_flipped") / "checkpoints" / "step-00000001" / "ema.safetensors")
    generate_pairs(CallableTeacher(lambda z, c: z.flip(-1), name="flip"), s / "pairs", n=4,
                   sample_shape=(1, 16, 16), shard_size=4, progress=False)
    _flip(_copy(s / "pairs", s / "pairs_flipped") / "shard-00000.safetensors", 0.7)
    (s / "tiny.yaml").write_text("{}\n")
    (s / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (s / "afile").write_text("not a directory\n")
    (s / "dir.png").mkdir()
    np.savez(s / "empty.npz", x=np.zeros((0, 1, 16, 16), np.float32))
    np.savez(s / "nan.npz", x=np.full((2, 1, 8, 8), np.nan, np.float32))
    np.savez(s / "complex.npz", x=np.zeros((2, 1, 8, 8), np.complex64))
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(s / "1x1.png")
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(s / "red.png")
    (s / "images").mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(s / "images" / "a.png")
    return s


SAMPLE = ["sample", "{s}/ck", "--n", "2", "--out", "{s}/new/o.png"]
SR_RUN = ["sr", "{s}/sr", "--input", "{s}/nan.npz", "--out", "{s}/new/sr.png"]
EXPORT = ["{s}/ck", "--format", "ep", "-o", "{s}/new/g.pt2"]
LATENCY = ["bench", "latency", "--iters", "1", "--euler", "1", "--no-rk45", "--out", "{s}/new/l.json",
           "--png", "{s}/new/l.png"]
PAIRS = ["pairs", "{s}/ck", "--out", "{s}/new/pairs", "--count", "2", "--solver", "euler", "--steps", "1", "--quiet"]

# (id, argv, text the one line must hold); "export" argv go to fastflow-export.
PROBES: list[tuple[str, list[str], str]] = [
    # 1. a flipped byte in a payload, for every verb that reads it
    ("sample-flipped", [*SAMPLE[:1], "{s}/ck_flipped", *SAMPLE[2:]], "ema.safetensors: SHA-256 mismatch"),
    ("eval-flipped", ["eval", "{s}/ck_flipped", "--n", "4", "--features", "none"], "SHA-256 mismatch"),
    ("export-flipped", ["export", "{s}/ck_flipped", *EXPORT[1:]], "SHA-256 mismatch"),
    ("sr-flipped", ["sr", "{s}/sr_flipped", *SR_RUN[2:]], "SHA-256 mismatch"),
    ("pairs-flipped-teacher", [PAIRS[0], "{s}/ck_flipped", *PAIRS[2:]], "SHA-256 mismatch"),
    ("bench-flipped-student", [*LATENCY, "--student", "{s}/ck_flipped"], "SHA-256 mismatch"),
    ("train-resume-flipped-state", [*TRAIN, "out_dir={s}/run_flipped", "--resume"], "state.pt: SHA-256 mismatch"),
    ("train-init-from-flipped", [*TRAIN, "out_dir={s}/new/run", "train.init_from={s}/ck_flipped"], "SHA-256 mismatch"),
    (
        "train-flipped-pair-shard",
        [
            *TRAIN,
            "out_dir={s}/new/run",
            "data={{name: pairs, root: '{s}/pairs_flipped'}}",
            "objective={{name: distill}}",
        ],
        "shard-00000.safetensors",
    ),
    # 2. sr checks its input and output like sample
    ("sr-nan-input", SR_RUN, "NaN or Inf"),
    ("sr-complex-input", [*SR_RUN[:3], "{s}/complex.npz", *SR_RUN[4:]], "real numbers"),
    ("sr-out-xyz", [*SR_RUN[:5], "{s}/new/x.xyz"], ".png"),
    ("sr-scale-0", [*SR_RUN, "--scale", "0"], "trained for ×2"),
    ("sr-1x1-image", [*SR_RUN[:3], "{s}/1x1.png", *SR_RUN[4:]], "low-resolution [N, 1, 8, 8]"),
    ("sr-colour-image-grey-model", [*SR_RUN[:3], "{s}/red.png", *SR_RUN[4:]], "colour image"),
    ("sr-tau-2", [*SR_RUN, "--tau", "2"], "--tau must be in [0, 1]"),
    ("sr-grid-jpg", [*SR_RUN, "--grid", "{s}/new/g.jpg"], "--grid a .png"),
    ("sr-grid-is-the-output", [*SR_RUN, "--grid", "{s}/new/sr.png"], "names the same file"),
    ("tiny-sd-into-a-file", ["tiny-sd", "{s}/nan.npz"], "not an empty directory"),
    ("tiny-sd-negative-seed", ["tiny-sd", "{s}/new/sd", "--seed", "-1"], "--seed"),
    ("checkpoint-info-missing", ["checkpoint", "info", "{s}/missing"], "missing"),
    ("checkpoint-info-flipped-config", ["checkpoint", "info", "{s}/nan.npz", "--verify"], "nan.npz"),
    ("config-show-unknown-key", ["config", "show", "digits", "train.stepz=1"], "stepz"),
    ("config-show-missing-file", ["config", "show", "{s}/nope.yaml"], "nope.yaml"),
    ("export-velocity-of-a-class-model-steps", ["export", *EXPORT, "--velocity", "--steps", "2"], "--velocity"),
    (
        "export-external-data-pt2",
        ["export", "{s}/ck", "--format", "pt2", "-o", "{s}/new/g.pt2", "--external-data"],
        "--external-data",
    ),
    (
        "bench-winners-table-is-input",
        ["bench", "winners", "{s}/nan.npz", "--out", "{s}/new/w.json", "--switch-table", "{s}/nan.npz"],
        "names the same file",
    ),
    ("sr-out-dir", [*SR_RUN[:5], "{s}/dir.png"], "is a directory"),
    # 3. resume: symlink loop, unreadable/corrupted `latest`, refused pickle in one line
    ("train-resume-symlink-loop", [*TRAIN, "out_dir={s}/run_loop", "--resume"], "looping symlink"),
    ("train-resume-binary-latest", [*TRAIN, "out_dir={s}/run_binlatest", "--resume"], "latest: corrupted"),
    ("train-resume-refused-pickle", [*TRAIN, "out_dir={s}/run_pickle", "--resume"], "refused to unpickle"),
    ("sample-binary-latest", [*SAMPLE[:1], "{s}/run_binlatest", *SAMPLE[2:]], "latest: corrupted"),
    # 4. a batch far larger than the data
    ("train-huge-batch", [*TRAIN, "out_dir={s}/new/run", "train.batch_size=100000000"], "over 64× the dataset"),
    ("train-batch-3m", [*TRAIN, "out_dir={s}/new/run", "train.batch_size=3000000"], "lower train.batch_size"),
    # 5. paths, decoding, devices, memory
    ("train-binary-yaml", ["train", "{s}/binary.yaml"], "not a text file"),
    ("train-out-dir-is-file", [*TRAIN, "out_dir={s}/afile"], "is not a directory"),
    ("train-out-dir-under-file", [*TRAIN, "out_dir={s}/afile/run"], "cannot write to directory"),
    ("train-out-dir-under-proc", [*TRAIN, "out_dir=/proc/fastflow-run"], "cannot write to directory"),
    ("train-npz-0-samples", [*TRAIN, "out_dir={s}/new/run", "data={{name: npz, path: '{s}/empty.npz'}}"], "non-empty"),
    (
        "train-folder-resolution-0",
        [*TRAIN, "out_dir={s}/new/run", "data={{name: folder, root: '{s}/images', resolution: 0, channels: 1}}"],
        "data.resolution",
    ),
    (
        "train-folder-resolution-neg",
        [*TRAIN, "out_dir={s}/new/run", "data={{name: folder, root: '{s}/images', resolution: -4, channels: 1}}"],
        "data.resolution",
    ),
    (
        "train-folder-resolution-abc",
        [*TRAIN, "out_dir={s}/new/run", "data={{name: folder, root: '{s}/images', resolution: abc, channels: 1}}"],
        "data.resolution",
    ),
    ("sample-out-is-dir", [*SAMPLE[:5], "{s}/dir.png"], "is a directory"),
    ("sample-out-under-file", [*SAMPLE[:5], "{s}/afile/o.png"], "afile is a file, not a directory"),
    ("sample-device-bogus", [*SAMPLE, "--device", "bogus"], "unknown device 'bogus'"),
    ("sample-oom", [*SAMPLE[:3], "1000000000", "--out", "{s}/new/o.npz"], "of memory is available"),
    ("sample-png-too-many", [*SAMPLE[:3], "5000", *SAMPLE[4:]], "at most 4096"),
    ("export-out-unwritable", ["export", *EXPORT[:3], "-o", "/proc/fastflow/g.pt2"], "cannot write"),
    ("export-report-unwritable", ["export", *EXPORT, "--report", "/proc/fastflow/r.json"], "cannot write"),
    ("bench-euler-abc", [*LATENCY, "--euler", "abc"], "comma list of integers"),
    ("bench-iters-0", [*LATENCY, "--iters", "0"], "must be >= 1"),
    ("bench-png-txt", [*LATENCY[:-1], "{s}/new/l.txt"], "want a .png file"),
    ("bench-batch-0", [*LATENCY, "--batch", "0"], "must be >= 1"),
    ("bench-backend-foo", [*LATENCY, "--backends", "eager,foo"], "comma list of eager"),
    ("bench-kernels-device-bogus", ["bench", "kernels", "--device", "bogus"], "unknown device"),
    ("bench-kernels-ops-foo", ["bench", "kernels", "--ops", "foo"], "comma list of gn, attn"),
    ("demo-out-is-file", ["demo", "--out", "{s}/afile"], "is not a directory"),
    ("demo-compile-bogus", ["demo", "--out", "{s}/new/d", "--compile", "fast"], "must be one of off, model, step"),
    ("demo-amp-bogus", ["demo", "--out", "{s}/new/d", "--amp", "fp8"], "invalid choice: 'fp8'"),
    ("demo-fused-cpu", ["demo", "--out", "{s}/new/d", "--fused", "cpu"], "inference-only"),
    ("bench-train-teacher-missing", ["bench", "train", "--presets", "tiny", "--out", "{s}/new/t.json", "--teacher",
                                     "{s}/nope"], "neither a checkpoint directory"),
    ("bench-train-pair-paths-foo", ["bench", "train", "--pair-paths", "eager,foo"], "comma list of eager"),
    ("bench-train-pairs-0", ["bench", "train", "--pairs", "0"], "must be >= 1"),
    # 6. the rest of the review, and more
    ("train-lr-inf", [*TRAIN, "out_dir={s}/new/run", "optim.lr=.inf"], "must be a finite number"),
    ("train-ema-nan", [*TRAIN, "out_dir={s}/new/run", "train.ema_rate=.nan"], "must be a finite number"),
    ("sample-atol-negative", [*SAMPLE, "--solver", "rk45", "--atol", "-1"], "must be > 0"),
    ("export-atol-negative", ["export", *EXPORT, "--atol", "-1"], "must be >= 0"),
    ("sample-cfg-unconditional", [*SAMPLE, "--cfg", "3"], "needs a conditional model"),
    ("pairs-cfg-unconditional", [*PAIRS, "--cfg", "3"], "needs a conditional teacher"),
    ("sample-label-unconditional", [*SAMPLE, "--label", "3"], "not class-conditional"),
    (
        "sample-label-out-of-range",
        [*SAMPLE[:1], "{s}/ck_cond", *SAMPLE[2:], "--label", "12"],
        "--label must be in [0, 10)",
    ),
    ("sample-truncated", [*SAMPLE[:1], "{s}/ck_truncated", *SAMPLE[2:], "--weights", "model"], "truncated"),
    ("sample-out-jpg", [*SAMPLE[:5], "{s}/new/o.jpg"], "must end in .png or .npz"),
    ("sample-n-0", [*SAMPLE[:3], "0", *SAMPLE[4:]], "must be >= 1"),
    ("sample-steps-abc", [*SAMPLE, "--steps", "abc"], "not an integer"),
    ("sample-missing-ckpt", [*SAMPLE[:1], "{s}/nowhere", *SAMPLE[2:]], "neither a checkpoint directory"),
    ("threads-0", [*SAMPLE, "--threads", "0"], "must be >= 1"),
    ("threads-huge", [*SAMPLE, "--threads", "100000"], "cores this process may use"),  # was a SIGSEGV in libgomp
    # 7. issue 21: every section has a schema; a teacher must fit the student; resume must continue the run
    ("train-channels-float", [*TRAIN, "out_dir={s}/new/run", "model.channels=8.5"], "'model.channels': expected int"),
    ("train-dropout-2", [*TRAIN, "out_dir={s}/new/run", "model.dropout=2"], "dropout must be in [0, 1)"),
    ("train-cond-drop-abc", [*TRAIN, "out_dir={s}/new/run", "objective.cond_drop=abc"], "expected float"),
    ("train-cond-drop-1.5", [*TRAIN, "out_dir={s}/new/run", "objective.cond_drop=1.5"], "cond_drop must be in"),
    ("train-distance-list", [*TRAIN, "out_dir={s}/new/run", "objective.distance=[l2]"], "expected str"),
    ("train-data-size-abc", [*TRAIN, "out_dir={s}/new/run", "data.size=abc"], "'data.size': expected int"),
    (
        "train-time-scale-abc",
        [*TRAIN, "out_dir={s}/new/run", "objective.time={{kind: logit_normal, scale: abc}}"],
        "'objective.time.scale': expected float",
    ),
    (
        "train-teacher-of-another-kind",
        [*TRAIN, "out_dir={s}/new/run", "objective={{name: fgd, teacher: '{s}/sr'}}"],
        "objective.teacher is image-conditioned, the student unconditional",
    ),
    (
        "train-resume-other-batch",
        [*TRAIN, "out_dir={s}/run", "train.steps=4", "train.batch_size=8", "--resume"],
        "train.batch_size=16; resuming with 8",
    ),
]
if not torch.cuda.is_available():
    PROBES.append(("sample-device-cuda-without-gpu", [*SAMPLE, "--device", "cuda"], "no CUDA GPU"))


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def _call(argv: list[str]) -> int:
    cli, argv = (export_cli, argv[1:]) if argv[0] == "export" else (fastflow_cli, argv)
    try:
        return cli.main(argv)
    except SystemExit as e:  # argparse
        return int(e.code)


@pytest.fixture
def threads():
    """The CLI sets torch's thread count: give the test process its own back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("argv,match", [p[1:] for p in PROBES], ids=[p[0] for p in PROBES])
def test_probe_gives_one_line_and_exit_2(box, argv, match, capsys, threads) -> None:
    argv = [a.format(s=box) for a in argv]
    before = _files(box)
    rc = _call(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err, err
    assert match in err, err
    assert _files(box) == before, sorted(map(str, _files(box) - before))  # nothing written, nothing removed


@pytest.mark.parametrize("value", ["abc", "100000", "0"])
def test_fastflow_threads_env_is_checked(box, capsys, monkeypatch, threads, value) -> None:
    monkeypatch.setenv("FASTFLOW_THREADS", value)
    assert _call([a.format(s=box) for a in SAMPLE]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_unwritable_out_dir(box, tmp_path, capsys, threads) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    assert _call([a.format(s=box) for a in [*TRAIN, f"out_dir={ro}/run"]]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_resume_without_checkpoints_says_so_and_stale_temps_go(box, tmp_path, capsys, threads) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / ".latest.abc12345.tmp").write_text("step-000")  # a kill during the pointer write
    argv = [a.format(s=box) for a in TRAIN[:-1]]
    assert fastflow_cli.main([*argv, "train.steps=1", f"out_dir={run}", "--resume"]) == 2  # nothing to resume
    assert "holds no checkpoint" in capsys.readouterr().err
    assert fastflow_cli.main([*argv, "train.steps=1", f"out_dir={run}", "--resume", "auto"]) == 0
    assert "no checkpoint" in capsys.readouterr().out
    assert not list((run / "checkpoints").glob(".*.tmp")) and (run / "checkpoints" / "latest").is_file()


def test_threads_option_and_environment(box, monkeypatch, threads) -> None:
    from fastflow.utils.threads import available_cores, configure_threads, default_threads

    monkeypatch.delenv("FASTFLOW_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert configure_threads() == default_threads() == torch.get_num_threads() >= 1
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # e.g. torchrun's: left as it is
    assert configure_threads() == 2 == torch.get_num_threads()
    monkeypatch.setenv("FASTFLOW_THREADS", "1")
    assert configure_threads() == 1 == torch.get_num_threads()
    n = min(2, available_cores())
    assert configure_threads(n) == n == torch.get_num_threads()  # the option wins over the environment


def test_console_scripts_share_the_boundary(box) -> None:
    res = run_cli("train", str(box / "binary.yaml"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "not a text file" in res.stderr, res.stderr
    res = run_cli("-m", "fastflow.cli.export", str(box / "ck"), "--format", "ep", "-o", "/proc/x/g.pt2")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "cannot write" in res.stderr, res.stderr


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="watches /proc/PID/maps")
@pytest.mark.parametrize("delay", [0.0, 0.6, 1.2])
def test_ctrl_c_while_the_cli_loads_is_one_line_and_exit_130(tmp_path, delay) -> None:
    """SIGINT during start-up (torch and the CLI importing) used to print a long traceback, and, mid
    numpy import, an ImportError or a swallowed interrupt and a RecursionError later. The signal is
    sent ``delay`` s after the child has mapped libtorch (inside the imports on this machine; later
    ones land in the demo's work)."""
    import signal
    import subprocess
    import sys
    import time

    from helpers import cli_env

    # SIGINT as a terminal delivers it, whatever this suite inherited (a shell's background job ignores it)
    proc = subprocess.Popen([sys.executable, "-m", "fastflow", "demo", "--out", str(tmp_path / "d")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    maps, deadline = Path(f"/proc/{proc.pid}/maps"), time.monotonic() + 60
    while "libtorch" not in maps.read_text() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, err)
    assert "Traceback" not in err and err.strip().count("\n") == 0 and "interrupted" in err, err
