"""The run-time conventions: expected errors end a rule script with their message alone (no traceback), others
keep their traceback; the device choice. The last test runs a small workflow copy with six bad input rows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import yaml
from e2e import copy_checkout, snakemake

from deepfeat.data.render import RenderError
from deepfeat.data.sources import IngestError
from deepfeat.runtime import UserError, pick_device, rule_log

ROOT = Path(__file__).resolve().parents[1]


def _smk(tmp_path, rule="ingest"):
    return SimpleNamespace(log=[str(tmp_path / "logs" / "x.log")], rule=rule)


@pytest.mark.parametrize("cls", [IngestError, RenderError])
def test_the_expected_errors_are_user_errors(cls):
    assert issubclass(cls, UserError) and issubclass(cls, ValueError)  # callers catching ValueError still do


def test_a_user_error_is_logged_without_traceback_and_exits_1(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        with rule_log(_smk(tmp_path)) as log:
            log.info("starting")
            raise IngestError("datasets.x: 2 bad rows in m.csv:\n  line 2 (a.wav): empty label")
    assert e.value.code == 1 and e.value.__cause__ is None and e.value.__suppress_context__
    text = (tmp_path / "logs" / "x.log").read_text()
    assert "starting" in text and "rule ingest failed: datasets.x: 2 bad rows" in text and "line 2 (a.wav)" in text
    err = capsys.readouterr().err
    assert "Traceback" not in text and "Traceback" not in err and err.count("2 bad rows") == 1


def test_an_unexpected_error_keeps_its_traceback_and_is_reraised(tmp_path):
    with pytest.raises(KeyError, match="oops"):
        with rule_log(_smk(tmp_path, "train")):
            raise KeyError("oops")
    text = (tmp_path / "logs" / "x.log").read_text()
    assert "rule train failed" in text and "Traceback" in text and "KeyError: 'oops'" in text


def test_a_script_ending_in_a_user_error_prints_no_traceback(tmp_path):
    """What Snakemake runs: a Python process whose job raises a UserError exits 1 and prints the message once."""
    code = (
        "from types import SimpleNamespace\n"
        "from deepfeat.runtime import UserError, rule_log\n"
        f"with rule_log(SimpleNamespace(log=[{str(tmp_path / 'l.log')!r}], rule='r')):\n"
        "    raise UserError('the message')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout and r.stderr.count("the message") == 1


def test_pick_device():
    import torch

    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(torch.device("cpu")) == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            pick_device("cuda")


def _bad_folder(root: Path) -> None:
    """Two good recordings and six bad rows: corrupt, truncated, 2 s, missing, empty label, ../outside.wav."""
    root.mkdir(parents=True)
    sr = 22050
    t = np.arange(9 * sr) / sr
    for name in ("a.wav", "b.wav", "x.wav", "short.wav", "cut.wav"):
        n = {"short.wav": 2 * sr}.get(name, t.size)
        sf.write(root / name, (0.3 * np.sin(2 * np.pi * 330 * t[:n])).astype(np.float32), sr, subtype="PCM_16")
    sf.write(root.parent / "outside.wav", (0.1 * np.sin(t)).astype(np.float32), sr)
    (root / "cut.wav").write_bytes((root / "cut.wav").read_bytes()[:20000])
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 10)
    rows = ["a.wav,bach", "b.wav,haydn", "corrupt.wav,bach", "cut.wav,bach", "short.wav,bach", "gone.wav,bach"]
    rows += ["x.wav,", "../outside.wav,haydn"]
    (root / "metadata.csv").write_text("path,composer\n" + "\n".join(rows) + "\n")


@pytest.mark.slow
def test_snakemake_reports_bad_input_once_without_traceback(tmp_path):
    """A new user's folder with six bad rows, through a real Snakemake run of a workflow copy: the ingest job fails
    once, listing all six rows, and no traceback is printed anywhere."""
    work = copy_checkout(tmp_path / "wf")
    _bad_folder(work / "data" / "mine")
    cfg = {
        "datasets": {
            "mine": {
                "format": "recordings",
                "path": "data/mine",
                "sample_rate": 22050,
                "recordings": {"part_of_piece": False},
                "tasks": [{"name": "composer", "type": "classification", "label": "composer"}],
                "main_task": "composer",
            }
        }
    }
    (work / "mine.yaml").write_text(yaml.safe_dump(cfg))
    r = snakemake(work, "--configfile", "mine.yaml", "--cores", "1", "results/mine/clips.h5", check=False)
    out = r.stdout + r.stderr
    log = (work / "logs" / "mine" / "ingest.log").read_text()
    assert r.returncode != 0 and not (work / "results" / "mine" / "clips.h5").exists()
    assert out.count("Traceback") == 0 and log.count("Traceback") == 0, out[-3000:]
    assert "6 bad rows in" in log and log.count("6 bad rows in") == 1
    for line in ("line 4 (corrupt.wav)", "line 5 (cut.wav)", "line 6 (short.wav)", "line 7 (gone.wav)"):
        assert line in log, line
    assert "line 8 (x.wav): empty label" in log and "line 9 (../outside.wav): the path leaves" in log
