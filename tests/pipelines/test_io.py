"""pipelines/io.py: outputs appear whole or not at all, with ordinary permissions; progress lines."""
from __future__ import annotations

import io as stdio
import json
import os
import stat

import pytest

from pipelines import io


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_an_error_mid_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    out = tmp_path / "metrics.json"
    io.write_json(out, {"f1": 0.8})
    with pytest.raises(RuntimeError, match="disk"):
        with io.atomic_write(out) as f:
            f.write(b'{"f1": 0.')
            raise RuntimeError("disk full")
    assert json.loads(out.read_text()) == {"f1": 0.8}
    assert _leftovers(tmp_path) == []


def test_a_writer_that_wants_a_file_name_is_atomic_too(tmp_path):
    out = tmp_path / "fig.png"

    def broken(name):
        with open(name, "wb") as f:
            f.write(b"half")
        raise ValueError("matplotlib failed")

    with pytest.raises(ValueError):
        io.write_with(out, broken, suffix=".png")
    assert not out.exists() and _leftovers(tmp_path) == []
    io.write_with(out, lambda name: open(name, "wb").write(b"png"), suffix=".png")
    assert out.read_bytes() == b"png"


def test_outputs_get_ordinary_permissions_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        for path in (io.write_text(tmp_path / "a.txt", "x"), io.copy_file(tmp_path / "a.txt", tmp_path / "b.txt"),
                     io.write_with(tmp_path / "c.bin", lambda n: open(n, "wb").write(b"c"))):
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    finally:
        os.umask(old)


def test_json_is_sorted_with_a_final_newline_and_numpy_scalars(tmp_path):
    import numpy as np

    text = io.write_json(tmp_path / "m.json", {"b": np.float32(0.5), "a": 1}).read_text()
    assert text.endswith("\n") and text.index('"a"') < text.index('"b"')
    assert json.loads(text) == {"a": 1, "b": 0.5}


def test_progress_prints_rate_and_eta():
    stream = stdio.StringIO()
    progress = io.Progress("fetch drive/train", total=4, unit="samples", stream=stream)
    progress.step(2, what="21")
    line = stream.getvalue().strip()
    assert line.startswith("fetch drive/train: 2/4 samples 21 (") and "/s" in line and "ETA 0:00:" in line
    assert io.format_eta(3723) == "1:02:03"
