"""``semcorr train r2d2 --preset wasf``: the released mix and schedule, exact resume, torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from semcorr.cli.main import main
from semcorr.errors import InputError
from semcorr.train.r2d2 import R2D2TrainConfig, train_r2d2
from semcorr.train.r2d2.released import ReleasedPairs
from semcorr.train.r2d2.trainer import batch_items, config_from_options, total_steps
from shared_data import REPO, shared_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from r2d2_fixtures import write_wasf  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

#: A tiny network and 64-pixel crops: the data pipeline is the released one.
TINY = {"mchan": 1, "dim": 16, "crop": 64, "patch": 8, "batch_size": 4}


@pytest.fixture(scope="module")
def wasf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_wasf(tmp_path_factory.mktemp("wasf") / "data", shared_path("r2d2"))


def test_preset_is_the_released_schedule() -> None:
    config = config_from_options("root", "out", preset="wasf")
    assert (config.epochs, config.batch_size, config.lr, config.weight_decay) == (25, 8, 1e-4,
                                                                                  5e-4)
    assert (config.crop, config.patch, config.num_bins, config.base) == (192, 16, 20, 0.5)
    assert config.sources == "WASF" and config.sampler == {}  # NghSampler2's defaults
    assert total_steps(config, 100) == 25 * 13  # the last batch of an epoch is smaller
    epochs = [batch_items(config, step, 100) for step in range(26)]
    first = sorted(i for e, items in epochs[:13] for i in items)
    assert first == list(range(100)) and epochs[12][1].__len__() == 4  # each item once
    assert epochs[13][0] == 1 and epochs[13][1] != epochs[0][1]  # a new order per epoch
    assert config_from_options("r", "o", preset="wasf", lr=3e-4).lr == 3e-4  # options win
    with pytest.raises(InputError, match="unknown preset"):
        config_from_options("r", "o", preset="wsaf")
    with pytest.raises(InputError, match="epochs applies to the wasf preset"):
        config_from_options("r", "o", epochs=2)


def test_released_pairs_mix_all_sources(wasf: Path) -> None:
    pairs = ReleasedPairs(wasf, crop=64, seed=3)
    assert len(pairs) == 4 + 4 + 2 + 2  # W (lists 0, 1), A, S, F
    assert len(ReleasedPairs(wasf, "SF", crop=64)) == 4
    for index in range(len(pairs)):
        item = pairs.sample(index, 0)
        assert item["image1"].shape == item["image2"].shape == (3, 64, 64)
        assert item["aflow"].shape == (2, 64, 64) and item["aflow"].dtype == torch.float32
        assert 0 <= float(item["image1"].min()) and float(item["image2"].max()) <= 1
        assert torch.isfinite(item["aflow"]).float().mean() > 0.3, index
    again = ReleasedPairs(wasf, crop=64, seed=3)
    assert torch.equal(again.sample(5, 0)["image2"], pairs.sample(5, 0)["image2"])
    assert not torch.equal(pairs.sample(5, 1)["image2"], pairs.sample(5, 0)["image2"])
    with pytest.raises(InputError, match="unknown R2D2 training source 'X'"):
        ReleasedPairs(wasf, "WX")


def _config(wasf: Path, out: Path, **extra: object) -> R2D2TrainConfig:
    return config_from_options(str(wasf), str(out), preset="wasf", epochs=1,
                               checkpoint_every=1, **{**TINY, "sources": "SF", "batch_size": 1,
                                                      **extra})


def test_rerun_resumes_exactly(wasf: Path, tmp_path: Path) -> None:
    """An interrupted run, re-run, ends with the same weights and losses as a run that was
    never interrupted (4 steps: one epoch of the 4 S and F pairs in batches of 1)."""
    whole = train_r2d2(_config(wasf, tmp_path / "whole"))

    class Stop(Exception):
        pass

    def stop_at_three(step: int, _: dict) -> None:
        if step == 2:
            raise Stop

    with pytest.raises(Stop):
        train_r2d2(_config(wasf, tmp_path / "cut"), progress=stop_at_three)
    steps: list[int] = []
    cut = train_r2d2(_config(wasf, tmp_path / "cut"), progress=lambda s, d: steps.append(s))
    assert steps == [2, 3]  # step 2 was not checkpointed before the stop: done again
    a = torch.load(whole, weights_only=True)["state_dict"]
    b = torch.load(cut, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logs = [[json.loads(line) for line in (p.parent / "log.jsonl").read_text().splitlines()]
            for p in (whole, cut)]
    assert [e["step"] for e in logs[1]] == [0, 1, 2, 3]
    assert [e["loss"] for e in logs[0]] == [e["loss"] for e in logs[1]]
    fresh = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    assert fresh["step"] == 4 and not torch.equal(fresh["state_dict"]["ops.0.weight"],
                                                  _initial_weights(wasf))


def _initial_weights(wasf: Path) -> torch.Tensor:
    from semcorr.train.r2d2 import _build_model

    return _build_model(_config(wasf, Path("unused"))).net.state_dict()["ops.0.weight"]


def test_cli_wasf_and_custom(wasf: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    options = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    code = main(["train", "r2d2", "--preset", "wasf", "--root", str(wasf), "--out",
                 str(tmp_path / "w"), "--epochs", "1", "--sources", "AF", *options])
    assert code == 0
    saved = json.loads((tmp_path / "w" / "config.json").read_text())
    assert (saved["preset"], saved["sources"], saved["epochs"], saved["lr"]) == ("wasf", "AF",
                                                                                1, 1e-4)
    assert len((tmp_path / "w" / "log.jsonl").read_text().splitlines()) == 2  # 6 pairs / 4
    folder = wasf / "aachen" / "images_upright" / "db"
    assert main(["train", "r2d2", "--preset", "custom", str(folder), "--out",
                 str(tmp_path / "c"), "--steps", "1", *options]) == 0
    assert json.loads((tmp_path / "c" / "config.json").read_text())["preset"] == "custom"
    assert main(["train", "r2d2", "--preset", "wasf", "--out", str(tmp_path / "x")]) == 2
    assert "dataset root (--preset wasf --root DIR)" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_torchrun_two_processes(wasf: Path, tmp_path: Path) -> None:
    """Two gloo ranks split each batch, rank 0 alone writes, each rank's sampler state is
    saved, and the losses are close to one process's (not equal: batch-norm statistics are
    per rank; measured 1.504/1.460/1.417 on one process, 1.485/1.412/1.410 on two)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    options = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    command = ["-m", "semcorr", "train", "r2d2", "--preset", "wasf", "--root", str(wasf),
               "--epochs", "1", *options]
    multi = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *command,
         "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=900)
    assert multi.returncode == 0, multi.stderr[-2000:]
    assert multi.stdout.count("wrote") == 1
    single = subprocess.run([sys.executable, *command, "--out", str(tmp_path / "one")],
                            env=env, capture_output=True, text=True, timeout=900)
    assert single.returncode == 0, single.stderr[-2000:]
    two = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    one = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    assert two["step"] == one["step"] == 3 and len(two["sampler_states"]) == 2
    losses = [[json.loads(line)["loss"] for line in (tmp_path / d / "log.jsonl").read_text()
               .splitlines()] for d in ("one", "two")]
    print("losses, 1 vs 2 processes:", losses)
    assert np.allclose(losses[0][0], losses[1][0], rtol=0.1)  # same data, BN per rank


def test_loader_workers_make_the_same_batches(wasf: Path, tmp_path: Path) -> None:
    from semcorr.train.r2d2.trainer import _batches

    config = _config(wasf, tmp_path, batch_size=2)
    dataset = ReleasedPairs(wasf, "SF", crop=64, seed=0)
    alone = list(_batches(config, dataset, 0, 2))
    config.workers = 2
    workers = list(_batches(config, dataset, 0, 2))
    assert [s for s, _, _ in alone] == [s for s, _, _ in workers] == [0, 1]
    for (_, _, a), (_, _, b) in zip(alone, workers, strict=True):
        assert all(torch.equal(a[k].nan_to_num(-7), b[k].nan_to_num(-7)) for k in a)
