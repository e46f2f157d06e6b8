"""The diagnostic PNGs drawn in worker processes are the ones the main thread draws; a worker's error surfaces."""

import numpy as np
import pytest

from cryopipe.ctfestimate.stage import PngWriter


def _args(path):
    s = np.linspace(0.01, 0.2, 64)
    epa = dict(s=s, profile=np.cos(40 * s), ctf2=np.cos(40 * s) ** 2, corr=np.full(64, 0.5), first=4, last=60,
               resolution_A=6.0, threshold=0.3)
    image = np.random.default_rng(0).normal(size=(128, 128)).astype(np.float32)
    return path, image, epa, "mic: 20000 / 19800 A", 50.0


def test_worker_png_equals_main_thread_png(tmp_path):
    here, there = PngWriter(workers=0), PngWriter(workers=1)
    here.submit(*_args(tmp_path / "main.png"))
    for k in range(3):
        there.submit(*_args(tmp_path / f"worker{k}.png"))
    here.close()
    there.close()
    main = (tmp_path / "main.png").read_bytes()
    assert main[:8] == b"\x89PNG\r\n\x1a\n"
    for k in range(3):
        assert (tmp_path / f"worker{k}.png").read_bytes() == main


def test_a_worker_error_is_raised_by_close(tmp_path):
    writer = PngWriter(workers=1)
    path, image, epa, title, radius = _args(tmp_path / "bad.png")
    writer.submit(path, image, {**epa, "s": None}, title, radius)  # the drawing fails in the worker
    with pytest.raises(TypeError):
        writer.close()
