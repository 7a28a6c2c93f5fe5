"""Shared fixtures: the installed ``mamlrun`` command, composed configs, small real runs."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from mamlrun.paths import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
MAMLRUN = Path(sys.executable).with_name("mamlrun")
SHARED = ROOT.parent / "shared"
# Settings that keep a CLI run to a few seconds.
TINY = [
    "meta_iterations=20",
    "train.val_every=0",
    "train.log_every=10",
    "train.checkpoint_every=0",
    "eval.test_tasks=20",
    "train.progress=false",
    "test_inner_steps=3",
]


@pytest.fixture(autouse=True)
def _quiet_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def run_mamlrun(*args: str, cwd: Path, check: bool = True, timeout: float = 300, env: dict | None = None):
    """Run the installed console script as a user would; return the CompletedProcess."""
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([str(MAMLRUN), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"mamlrun {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def compose_config(*overrides: str, config_dir: Path = CONF_DIR, name: str = "config", hydra: bool = False):
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=hydra)


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def read_wandb_records(path: Path) -> list:
    """Records of a W&B ``.wandb`` transaction log (LevelDB-style blocks of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, records, buf = path.read_bytes(), 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            pos += -pos % block
            continue
        buf += data[pos : pos + length]
        pos += length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records
