"""Versions: one release number for the distribution, the weights' own version in every result, CHANGELOG.md."""

import json
import re
import shutil
from pathlib import Path

from typer.testing import CliRunner

import agatston
import cacnet
from cacnet.cli import app
from cacnet.ensemble import DEFAULT_WEIGHTS

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_one_release_number_read_by_pyproject_and_listed_in_the_changelog():
    from setuptools.config.pyprojecttoml import read_configuration

    version = cacnet.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", version) and version != "0.1.0"  # 0.1.0 since the first commit: not versioned
    assert agatston.__version__ == version  # one distribution, one number
    project = read_configuration(ROOT / "pyproject.toml", expand=False)
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "agatston._version.__version__"}
    assert read_configuration(ROOT / "pyproject.toml")["project"]["version"] == version
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"## [{version}]" in changelog  # this release has its section
    released = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", changelog, flags=re.M)
    assert released[0] == version and released == sorted(released, key=lambda v: tuple(map(int, v.split("."))),
                                                          reverse=True)
    assert "0.6.0" in released and "0.1.0" in released  # the earlier releases, reconstructed


def test_results_info_and_version_name_the_weights_version(phantom_scans, toy_weights, tmp_path):
    folder, _ = phantom_scans
    weights = tmp_path / "w"
    shutil.copytree(toy_weights, weights)
    manifest = json.loads((weights / "manifest.json").read_text())
    (weights / "manifest.json").write_text(json.dumps({**manifest, "version": "9.3"}))
    r = run("score", folder / "case21.nii.gz", "--json", "--force", "--weights", weights, "-o", tmp_path / "o")
    assert r.exit_code == 0, r.output
    for d in (json.loads(r.stdout), json.loads((tmp_path / "o" / "case21.json").read_text())):
        assert d["versions"]["cac-toolkit"] == cacnet.__version__ and d["versions"]["weights"] == "9.3"
        assert d["models"]["weights_version"] == "9.3"
    info = run("info", "--weights", weights)
    assert info.exit_code == 0 and re.search(r"version\s+9\.3", info.stdout) and cacnet.__version__ in info.stdout
    # weights without a version (cac train writes none): null, and info says so
    r = run("score", folder / "case21.nii.gz", "--json", "--force", "--weights", toy_weights)
    d = json.loads(r.stdout)
    assert d["versions"]["weights"] is None and d["models"]["weights_version"] is None
    assert "has no version" in run("info", "--weights", toy_weights).stdout
    shipped = json.loads((DEFAULT_WEIGHTS / "manifest.json").read_text())["version"]
    v = run("--version")
    assert v.exit_code == 0 and v.stdout.strip() == f"cac {cacnet.__version__} (shipped weights {shipped})"
