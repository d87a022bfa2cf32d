"""Built-in data: digits, 2-D toy, npz, image folder, CIFAR-10 (local), the resumable stream."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from fastflow.data import BatchStream, build_dataset
from fastflow.errors import ConfigError, DataError


def test_digits() -> None:
    d = build_dataset({"name": "digits"})
    assert len(d) == 1797 and d.num_classes == 10 and d.sample_shape == (1, 16, 16)
    b = d.get(torch.arange(100))
    assert b.x.min() >= -1 and b.x.max() <= 1 and b.x.min() < -0.9 and b.x.max() > 0.9
    assert b.label.dtype == torch.long and set(b.label.tolist()) <= set(range(10))


def test_toy2d() -> None:
    d = build_dataset({"name": "toy2d", "kind": "gaussians", "n": 4000, "modes": 8})
    x = d.get(torch.arange(4000)).x
    assert x.shape == (4000, 2)
    r = x.norm(dim=1)
    assert abs(float(r.mean()) - 4.0) < 0.1  # modes on the radius-4 circle
    assert build_dataset({"name": "toy2d", "kind": "moons", "n": 100}).sample_shape == (2,)
    with pytest.raises(ConfigError):
        build_dataset({"name": "toy2d", "kind": "spiral"})


def test_build_dataset_errors() -> None:
    with pytest.raises(ConfigError, match="unknown dataset"):
        build_dataset({"name": "mnist"})
    with pytest.raises(ConfigError, match="no option"):
        build_dataset({"name": "digits", "sise": 8})
    with pytest.raises(ConfigError, match="needs data.root"):
        build_dataset({"name": "folder"})


def test_npz(tmp_path) -> None:
    imgs = np.random.randint(0, 256, (10, 8, 8, 3), dtype=np.uint8)  # NHWC uint8
    np.savez(tmp_path / "a.npz", x=imgs, y=np.arange(10) % 3)
    d = build_dataset({"name": "npz", "path": str(tmp_path / "a.npz")})
    b = d.get(torch.arange(10))
    assert b.x.shape == (10, 3, 8, 8) and d.num_classes == 3
    assert torch.allclose(b.x[0, :, 1, 2], torch.from_numpy(imgs[0, 1, 2]).float() / 127.5 - 1)

    bad = np.zeros((4, 3, 8, 8), np.float32)
    bad[0, 0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=bad)
    with pytest.raises(DataError, match="NaN"):
        build_dataset({"name": "npz", "path": str(tmp_path / "nan.npz")})
    np.savez(tmp_path / "range.npz", x=np.full((4, 3, 8, 8), 5.0, np.float32))
    with pytest.raises(DataError, match=r"\[-1, 1\]"):
        build_dataset({"name": "npz", "path": str(tmp_path / "range.npz")})
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError):
        build_dataset({"name": "npz", "path": str(tmp_path / "junk.npz")})
    with pytest.raises(DataError, match="does not exist"):
        build_dataset({"name": "npz", "path": str(tmp_path / "none.npz")})


def test_image_folder(tmp_path) -> None:
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(np.random.randint(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    d = build_dataset({"name": "folder", "root": str(tmp_path), "resolution": 16})
    b = d.get(torch.tensor([0, 5]))
    assert b.x.shape == (2, 3, 16, 16) and b.label.tolist() == [0, 1] and d.num_classes == 2
    (tmp_path / "cat" / "broken.png").write_bytes(b"garbage")
    d = build_dataset({"name": "folder", "root": str(tmp_path), "resolution": 16})
    with pytest.raises(DataError, match="cannot decode"):
        d.get(torch.arange(len(d)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        build_dataset({"name": "folder", "root": str(tmp_path / "empty")})


def _write_cifar(root, n: int = 4) -> None:
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": np.random.randint(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": list(np.random.randint(0, 10, n).tolist())}
        (root / name).write_bytes(pickle.dumps(batch))


def test_cifar10_local(tmp_path) -> None:
    with pytest.raises(DataError, match="CIFAR-10 not found"):
        build_dataset({"name": "cifar10", "root": str(tmp_path / "nope")})
    _write_cifar(tmp_path / "c")
    d = build_dataset({"name": "cifar10", "root": str(tmp_path / "c")})
    assert len(d) == 20 and d.sample_shape == (3, 32, 32) and d.num_classes == 10


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar10_refuses_arbitrary_pickles(tmp_path) -> None:
    _write_cifar(tmp_path / "c")
    (tmp_path / "c" / "data_batch_3").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(DataError, match="refusing"):
        build_dataset({"name": "cifar10", "root": str(tmp_path / "c")})


def test_batch_stream_deterministic_and_disjoint() -> None:
    d = build_dataset({"name": "toy2d", "n": 50})
    a, b = BatchStream(d, 8, seed=3), BatchStream(d, 8, seed=3)
    for s in (0, 5, 17):
        assert torch.equal(a.indices(s), b.indices(s))
    # a stream started late agrees with one that ran from the start (resume needs no state)
    assert torch.equal(BatchStream(d, 8, seed=3).indices(17), a.indices(17))
    # each epoch visits every sample once; ranks take disjoint slices of one global batch
    seen = torch.cat([a.indices(s) for s in range(50 // 8 * 8 // 8)])
    assert len(seen.unique()) == len(seen)
    r0, r1 = BatchStream(d, 5, 0, rank=0, world=2), BatchStream(d, 5, 0, rank=1, world=2)
    for s in range(4):
        assert not set(r0.indices(s).tolist()) & set(r1.indices(s).tolist())
    assert not torch.equal(BatchStream(d, 8, seed=4).indices(0), a.indices(0))


def test_batch_stream_spans_epochs_in_linear_time_and_bounds_the_batch(monkeypatch) -> None:
    d = build_dataset({"name": "toy2d", "n": 50})
    s = BatchStream(d, 7, seed=2)
    stream = torch.cat([s._epoch_perm(e) for e in range(4)])  # positions 0..199 of the definition
    for step in range(20):  # batches that straddle epoch boundaries read the concatenated permutations
        assert torch.equal(s.indices(step), stream[7 * step:7 * step + 7])
    big = BatchStream(d, 64 * 50, seed=1)  # the largest batch allowed: 64 epochs in one batch
    perms = []  # the work proxy: one permutation per epoch the batch spans, none before it
    randperm = torch.randperm
    monkeypatch.setattr(torch, "randperm", lambda n, **kw: perms.append(n) or randperm(n, **kw))
    idx = big.indices(3)
    assert perms == [50] * 64
    assert torch.equal(torch.bincount(idx, minlength=50), torch.full((50,), 64))  # each epoch once per sample
    with pytest.raises(ConfigError, match="over 64×"):
        BatchStream(d, 64 * 50 + 1)


def test_thread_sweep_measures_idle_and_busy(monkeypatch) -> None:
    from fastflow.bench import threads

    threads._demo_step()()  # the real workload runs (one step)
    monkeypatch.setattr(threads, "_demo_step", lambda: (lambda: torch.ones(64, 64) @ torch.ones(64, 64)))
    rows = threads.thread_sweep([1], steps=2, warmup=0)
    assert [(r["threads"], r["neighbour"]) for r in rows] == [(1, "idle"), (1, "one busy core")]
    assert rows[0]["slowdown_vs_idle"] == 1.0 and all(r["step_ms_p50"] > 0 for r in rows)


def test_photo_crops_are_seeded_and_the_eval_photographs_are_held_out() -> None:
    from fastflow.data.photos import EVAL_PHOTOS, TRAIN_PHOTOS, PhotoCrops

    assert not set(EVAL_PHOTOS) & set(TRAIN_PHOTOS)
    a, b = PhotoCrops(size=16, count=10, seed=1), PhotoCrops(size=16, count=10, seed=1)
    x = a.get(torch.arange(10)).x
    assert x.shape == (10, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(x, b.get(torch.arange(10)).x) and torch.equal(a.get(torch.tensor([7])).x, x[7:8])
    assert not torch.equal(PhotoCrops(size=16, count=10, seed=2).get(torch.arange(10)).x, x)
    held = build_dataset({"name": "sr", "source": {"name": "photos", "split": "eval", "count": 4, "size": 16},
                          "scale": 4})
    batch = held.get(torch.arange(4))
    assert batch.x.shape == batch.image.shape == (4, 3, 16, 16) and len(held.base.photos) == len(EVAL_PHOTOS)
    with pytest.raises(ConfigError, match="split"):
        PhotoCrops(split="test")


def test_digits_are_scikit_learns_without_importing_it() -> None:
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    from fastflow.data.digits import digits_tensors

    x, y = digits_tensors(16)
    d = load_digits()
    ref = F.interpolate(torch.from_numpy(d.images).float().unsqueeze(1) / 16.0, size=(16, 16), mode="bilinear",
                        align_corners=False) * 2 - 1
    assert torch.equal(x, ref.clamp(-1, 1)) and torch.equal(y, torch.from_numpy(d.target).long())


def test_own_images_train_with_the_folder_config_and_a_mismatch_names_the_keys(tmp_path) -> None:
    """``fastflow train folder data.root=DIR``: the documented way to train on one's own images; a model
    that does not fit the images says which keys to change."""
    from helpers import run_cli
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    small = ["model.resolution=8", "model.channels=8", "model.ch_mult=[1]", "model.num_res_blocks=1",
             "model.attn_resolutions=[]", "train.steps=1", "train.batch_size=2", "train.progress=false",
             "train.sample_every=0", "train.sample_n=1", "train.tensorboard=false"]
    r = run_cli("train", "folder", f"out_dir={tmp_path / 'run'}", f"data.root={tmp_path / 'imgs'}",
                "data.resolution=8", *small)
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli("train", "folder", f"out_dir={tmp_path / 'bad'}", f"data.root={tmp_path / 'imgs'}", *small)
    assert r.returncode == 2 and "model.in_channels and model.resolution" in r.stderr and "data.resolution" in r.stderr
