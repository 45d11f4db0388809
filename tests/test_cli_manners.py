"""Command-line manners: documented exit statuses (0 ok, 1 failure, 2 usage), a quiet stop when
stdout is closed early (`| head`), and case-insensitive choices where torchvision lower-cases."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fastvid.cli import EXIT_CODES, main
from fastvid.video.config import parse_config


def _fastvid(*args, **kw):
    return subprocess.run([sys.executable, "-m", "fastvid", *args], capture_output=True, text=True, timeout=120, **kw)


def test_closed_stdout_exits_quietly(shard_root):
    # The reader goes away before fastvid writes anything, as `fastvid inspect --json | head -c 10` can.
    proc = subprocess.Popen([sys.executable, "-m", "fastvid", "inspect", str(shard_root / "train"), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141
    assert err == ""  # no "Broken pipe", no traceback


def test_closed_pipe_in_a_shell_pipeline(shard_root):
    r = subprocess.run(f"set -o pipefail; {sys.executable} -m fastvid inspect {shard_root / 'train'} --json | head -c 10",
                       shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120)
    assert len(r.stdout) == 10 and r.stdout.startswith("{")
    assert "Broken pipe" not in r.stderr and "Traceback" not in r.stderr
    assert r.returncode in (0, 141)  # 0 when all output fitted in the pipe before head exited


def test_exit_statuses(tmp_path, capsys):
    assert "0    success" in EXIT_CODES and "2    usage error" in EXIT_CODES
    assert main([]) == 0
    with pytest.raises(SystemExit) as usage:
        main(["train", "--lr-warmup-method", "cosine"])
    assert usage.value.code == 2
    assert main(["inspect", str(tmp_path / "missing")]) == 1
    assert "fastvid inspect: error:" in capsys.readouterr().err
    r = _fastvid("--help")
    assert r.returncode == 0 and "exit status:" in r.stdout and "141" in r.stdout


def test_choices_ignore_case_like_torchvision():
    cfg = parse_config(["--lr-warmup-method", "Linear", "--backend", "PyAV", "--amp-dtype", "BF16"])
    assert (cfg.lr_warmup_method, cfg.backend, cfg.amp_dtype) == ("linear", "pyav", "bf16")
    from fastvid.video.config import build_config

    assert build_config({"lr_warmup_method": "Constant"}).lr_warmup_method == "constant"
