"""``torchrun --nproc_per_node 2`` (gloo, CPU) fine-tuning equals one process, same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "features"))

from tests.train.test_finetune import write_warped_layout  # noqa: E402
from tiny_models import save_tiny_dinov2  # noqa: E402

from shared_data import REPO, shared_path  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _command(weights: Path, root: Path, out: Path) -> list[str]:
    return ["train", "finetune", "--backbone", "dinov2_vits14", "--weights", str(weights),
            "--layers", "2", "--dataset", "keypoints-json", "--root", str(root), "--out",
            str(out), "--steps", "4", "--batch-size", "4", "--micro-batch", "1",
            "--val-every", "2", "--val-pairs", "12", "--lr", "0.01", "--warmup", "2",
            "--device", "cpu", "--option", 'backbone_options={"num_patches": 8}',
            "--option", "temperature=0.1"]


@pytest.mark.slow
def test_torchrun_matches_one_process(tmp_path: Path) -> None:
    photos = sorted(shared_path("r2d2").glob("*.png"))
    root = write_warped_layout(tmp_path / "pairs", photos, 3, {"trn": 3, "val": 2})
    weights = save_tiny_dinov2(tmp_path / "tiny", layers=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    single = subprocess.run([sys.executable, "-m", "semcorr",
                             *_command(weights, root, tmp_path / "one")],
                            env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    multi = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "semcorr",
         *_command(weights, root, tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=600)
    assert multi.returncode == 0, multi.stderr[-2000:]
    a = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    worst = 0.0
    for name, value in a["trained"].items():
        if name.endswith("k_proj.bias"):
            continue  # no true gradient (softmax ignores a key bias): Adam amplifies rounding
        worst = max(worst, float((value - b["trained"][name]).abs().max()))
    print(f"largest parameter difference, 1 vs 2 processes: {worst:.2e}")
    assert worst < 1e-5
    losses_a = [h["loss"] for h in a["history"]]
    losses_b = [h["loss"] for h in b["history"]]
    assert losses_a == pytest.approx(losses_b, rel=1e-5)
    val_a = [h["val_pck"] for h in a["history"] if "val_pck" in h]
    val_b = [h["val_pck"] for h in b["history"] if "val_pck" in h]
    assert len(val_a) == 2 and val_a == pytest.approx(val_b)
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["best"]["step"] in (2, 4)
