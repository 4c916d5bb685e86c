"""settings.ini is the single source of the package's metadata and requirements."""
import configparser
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _settings():
    cfg = configparser.ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini", encoding="utf-8")
    return cfg["DEFAULT"]


def test_settings_has_the_nbdev2_fields_and_pins():
    s = _settings()
    assert s["lib_name"] == "avc_nb" and s["lib_path"] == "avc_nb" and s["nbs_path"] == "nbs"
    assert s["tst_flags"].split() == ["notest", "slow", "gpu"]
    req = shlex.split(s["requirements"])
    for pin in ["nbdev>=2.4.14,<3", "fastcore>=1.12.3,<2", "execnb>=0.1.12,<0.2"]:
        assert pin in req, pin
    names = {r.split("=")[0].split(">")[0].split("<")[0] for r in req}
    for pkg in ["torch", "torchaudio", "librosa", "matplotlib", "ipywidgets", "jupyterlab", "av",
                "soundfile", "numpy", "pandas", "pyyaml", "tqdm"]:
        assert pkg in names, pkg
    assert any(r.startswith("torch==2.11") for r in req) and any(r.startswith("torchaudio==2.11") for r in req)
    dev = {r.split(">")[0].split("=")[0] for r in shlex.split(s["dev_requirements"])}
    assert {"pytest", "hypothesis"} <= dev


def test_environment_yml_installs_the_package_and_lists_nothing_twice():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps and "pip" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert pip == ['-e ".[dev]"'], f"environment.yml must install the package with its dev extra only, got {pip}"
    req_names = {shlex.split(r)[0].split("=")[0].split(">")[0].split("<")[0]
                 for r in shlex.split(_settings()["requirements"])}
    conda_names = {str(d).split("=")[0] for d in deps if not isinstance(d, dict)} - {"python", "pip"}
    assert not conda_names & req_names, f"listed twice: {conda_names & req_names}"


def test_installed_metadata_matches_settings():
    "The installed package's requirements are exactly settings.ini's (re-install after editing it)."
    from packaging.requirements import Requirement

    def norm(reqs):
        out = set()
        for r in reqs:
            q = Requirement(r)
            out.add((q.name.lower().replace("_", "-"), str(q.specifier)))
        return out

    installed = [r for r in metadata.requires("avc_nb") or [] if "extra ==" not in r]
    assert norm(installed) == norm(shlex.split(_settings()["requirements"]))


def test_console_scripts_are_installed():
    for name in ["avc_synth", "avc_cache", "avc_train", "avc_probe", "avc_replicate"]:
        exe = Path(sys.executable).with_name(name)
        assert exe.exists(), exe
        out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "usage" in out.stdout.lower(), out.stderr[-2000:]
