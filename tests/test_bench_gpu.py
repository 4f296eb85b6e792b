"""tools/bench_gpu.py runs on the CPU at tiny size (the GPU figures come from a machine with one)."""

import re
import sys

from tools import bench_gpu


def test_bench_gpu_runs_tiny_on_the_cpu(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_gpu.py", "--tiny", "--steps", "2", "--warmup", "2"])
    bench_gpu.main()
    out = capsys.readouterr().out
    rows = re.findall(r"^(text|audio|vision)/data2vec2-base\s+2\s+([\d.]+)\s+([\d,]+) .*?([\d.]+)%", out, re.M)
    assert [r[0] for r in rows] == ["text", "audio", "vision"], out
    assert all(float(ms) > 0 and 0 < float(mfu) <= 100 for _, ms, _, mfu in rows)
    assert "goal: MFU >= 40%" in out
