"""The conda environment of the rules pins exactly what pyproject.toml pins (the README promises it)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# the workflow engine runs outside the rules' environment; it is not needed inside it
ENGINE = {"snakemake", "snakemake-executor-plugin-slurm"}


def _pins(requirements) -> dict[str, str]:
    out = {}
    for r in requirements:
        name = re.split(r"[=<>!~\[ ;]", r, maxsplit=1)[0].lower().replace("_", "-")
        out[name] = r.replace(" ", "")
    return out


def test_conda_envs_match_pyproject_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins(project["dependencies"])
    assert all("==" in spec for spec in pins.values()), "every runtime dependency is pinned in pyproject.toml"
    envs = sorted((ROOT / "envs").glob("*.yaml"))
    assert envs
    for env_file in envs:
        env = yaml.safe_load(env_file.read_text())
        pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
        env_pins = _pins(pip)
        for name, spec in env_pins.items():
            assert pins.get(name) == spec, f"{env_file.name}: {spec} differs from pyproject.toml ({pins.get(name)})"
        missing = set(pins) - set(env_pins) - ENGINE
        assert not missing, f"{env_file.name} lacks {sorted(missing)}"
        python = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
        assert python == ["python=3.11"], f"{env_file.name}: {python} (pyproject requires Python 3.11)"
