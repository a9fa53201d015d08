"""Multi-process training (DistributedDataParallel, gloo on CPU): every trained weight stays identical on all
ranks, the NFD connectors in the loss module included, with gradient accumulation; train.device picks the
local GPU under torchrun."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import torch

from conftest import TINY_OVERRIDES

SCRIPT = r'''
import json, os, sys
import torch
import nfdseg.distill.trainer as tr
from nfdseg.distill.config import load_run_config

made = {}
_loss, _model = tr.build_loss, tr.build_model
def build_loss(*a, **k):
    made["connectors"] = _loss(*a, **k)
    return made["connectors"]
def build_model(*a, **k):
    made["student"] = _model(*a, **k)
    return made["student"]
tr.build_loss, tr.build_model = build_loss, build_model
cfg = load_run_config("quick", json.loads(open(sys.argv[1]).read()))
tr.train_stage(cfg, "student", sys.argv[2], teacher_dir=sys.argv[3], progress=False)
torch.save({k: {n: t.detach().cpu() for n, t in m.named_parameters()} for k, m in made.items()},
           os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.pt"))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_keep_student_and_connectors_identical(tmp_path, trained_run):
    over = json.loads(json.dumps(TINY_OVERRIDES))
    over["student"]["model"]["arch"] = "deeplabv3_resnet10_w8"  # wider than the teacher: NFD needs connectors
    over["student"]["train"].update({"iters": 3, "batch_size": 2, "grad_accum": 2, "eval_every": 3, "ckpt_every": 3})
    (tmp_path / "cfg.json").write_text(json.dumps(over))
    (tmp_path / "run.py").write_text(SCRIPT)
    out = tmp_path / "student"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(tmp_path / "run.py"), str(tmp_path / "cfg.json"), str(out), str(trained_run / "teacher")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**__import__("os").environ,
                                                                            "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [torch.load(out / f"rank{i}.pt") for i in (0, 1)]
    conn = ranks[0]["connectors"]
    assert len(conn) >= 2, "the NFD loss has trainable connectors"
    start = torch.load(out / "last.pt", weights_only=False)
    assert start["iter"] == 3
    # trained parameters (BatchNorm running statistics are per rank between DDP's buffer broadcasts, as in any
    # DDP run without SyncBatchNorm; rank 0's are saved)
    for part in ("student", "connectors"):
        for name, t in ranks[0][part].items():
            assert torch.equal(t, ranks[1][part][name]), f"{part}.{name} differs between ranks"
    # and they did train: rank 0's saved connectors equal what both ranks hold
    for name, t in conn.items():
        assert torch.equal(start["distill"][name].cpu(), t), name


def test_device_under_torchrun_takes_local_rank(monkeypatch):
    from nfdseg.distill.trainer import pick_device
    from nfdseg.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # every process sees the node's 2 GPUs
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert pick_device("cuda") == torch.device("cuda", 1)
    assert pick_device("auto") == torch.device("cuda", 1)
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="same GPU"):
        pick_device("cuda:0")
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert pick_device("cuda") == torch.device("cuda", 0) and pick_device("cpu") == torch.device("cpu")


def test_device_under_torchrun_with_one_gpu_per_process(monkeypatch):
    """SLURM-style per-task CUDA_VISIBLE_DEVICES: each process sees only its own GPU, as cuda:0, whatever its
    LOCAL_RANK; a process that sees some GPUs but not one of its own is refused with a clear error."""
    from nfdseg.distill.trainer import pick_device
    from nfdseg.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert pick_device("cuda") == torch.device("cuda", 0)
    assert pick_device("auto") == torch.device("cuda", 0)
    assert pick_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match="same GPU"):
        pick_device("cuda:3")  # an ordinal this process cannot see
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # 2 GPUs visible, but rank 3 has none of its own
    for name in ("cuda", "auto", "cuda:3"):
        with pytest.raises(ConfigError, match="LOCAL_RANK 3 has no GPU of its own"):
            pick_device(name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; torch sees none here")
def test_amp_bf16_channels_last_on_a_gpu(tmp_path, trained_run):
    """train.device cuda (no index) + AMP bf16 + channels_last through train_stage: the manifest records them."""
    from nfdseg.distill.config import load_run_config
    from nfdseg.distill.trainer import train_stage

    over = json.loads(json.dumps(TINY_OVERRIDES))
    over["student"]["model"]["arch"] = "deeplabv3_resnet10_w8"
    over["student"]["train"].update({"iters": 3, "eval_every": 3, "device": "cuda", "amp": "bf16",
                                     "channels_last": True})
    m = train_stage(load_run_config("quick", over), "student", tmp_path / "s", teacher_dir=trained_run / "teacher",
                    progress=False)
    assert m.metrics["device"] == "cuda:0" and m.metrics["amp"] == "bfloat16"
