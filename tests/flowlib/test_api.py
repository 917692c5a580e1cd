"""The public API of flowlib, its dependency boundary, and bits/dim."""
from __future__ import annotations

import math
import subprocess
import sys

import torch

import flowlib


def test_import_loads_no_pipeline_dependencies():
    code = ("import sys, flowlib; bad = [m for m in ('ray', 'mlflow', 'dvc', 'boto3', 'webdataset') "
            "if m in sys.modules]; print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import flowlib loaded {out.stdout.strip()}"


def test_public_api():
    for name in ("build_flow", "build_model", "build_dequantizer", "build_baseline", "bits_per_dim",
                 "save_checkpoint", "load_model"):
        assert callable(getattr(flowlib, name)), name


def test_bits_per_dim_by_hand():
    # a 3x4x4 image with log-likelihood -100 nats: 100 / (48 ln 2) = 3.00561... bits per dimension
    assert math.isclose(flowlib.bits_per_dim(-100.0, 48), 100 / (48 * 0.6931471805599453), rel_tol=1e-12)
    assert math.isclose(flowlib.bits_per_dim(-100.0, 48), 3.0056147, rel_tol=1e-6)
    # uniform over 256 levels is exactly 8 bits per dimension
    ll = torch.full((2,), -48 * math.log(256.0), dtype=torch.float64)
    torch.testing.assert_close(flowlib.bits_per_dim(ll, 48), torch.full((2,), 8.0, dtype=torch.float64))
