"""Recipes and cluster profiles: strict validation with the file and key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from dftflow.config import load_profile, load_recipe
from dftflow.errors import ConfigError
from dftflow.resources import bundled, resolve


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_bundled_recipe_and_profile_validates() -> None:
    assert {"demo", "ecd"} <= set(bundled("workflows"))
    assert {"local", "slurm-generic"} <= set(bundled("cluster_profiles"))
    for path in bundled("workflows").values():
        load_recipe(path)
    for path in bundled("cluster_profiles").values():
        load_profile(path)


def test_recipe_paths_are_relative_to_the_recipe(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\nsources:\n  - {type: cif, path: structures}\n")
    recipe = load_recipe(path)
    assert recipe.source_path(recipe.sources[0]) == tmp_path / "structures"


def test_unknown_key_is_named_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\nsources:\n  - {type: cif, path: a}\nscreening:\n  symetry: {symprec: 0.1}\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert str(path) in str(err.value)
    assert "screening.symetry: unknown key" in str(err.value)


def test_wrong_type_names_key_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\nsources:\n  - {type: cif, path: a}\nscreening:\n  symmetry: {symprec: loose}\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert "screening.symmetry.symprec" in str(err.value) and "'loose'" in str(err.value)


def test_bad_source_type_and_list_index(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\nsources:\n  - {type: cif, path: a}\n  - {type: poscar, path: b}\n")
    with pytest.raises(ConfigError, match=r"sources\[1\]\.type"):
        load_recipe(path)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\nsources: [\n")
    with pytest.raises(ConfigError, match="line"):
        load_recipe(path)


def test_profile_validation(tmp_path: Path) -> None:
    bad = write(tmp_path, "name: p\nscheduler: slurm\nslurm: {walltime: '4h'}\n", "p.yaml")
    with pytest.raises(ConfigError, match=r"slurm\.walltime"):
        load_profile(bad)
    missing = write(tmp_path, "name: p\nscheduler: slurm\n", "q.yaml")
    with pytest.raises(ConfigError, match="slurm: section"):
        load_profile(missing)


def test_resolve_prefers_a_users_file_and_lists_bundled_names(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    own = write(tmp_path, "name: mine\nsources:\n  - {type: cif, path: a}\n", "demo.yaml")
    assert resolve("workflows", "demo.yaml") == own.resolve()
    assert resolve("workflows", "demo").name == "demo.yaml" and resolve("workflows", "demo") != own
    with pytest.raises(ConfigError, match="bundled: .*demo"):
        resolve("workflows", "nonexistent")


def test_profiles_check_prints_the_batch_script_of_the_profile(monkeypatch) -> None:
    import json

    from typer.testing import CliRunner

    from dftflow.cli.app import app

    res = CliRunner().invoke(app, ["profiles", "check", "perlmutter-cpu", "--launch-dir", "/p/launches/x", "--json"])
    assert res.exit_code == 0, res.output
    script = json.loads(res.output)["script"]
    for line in ("#SBATCH --account=m0000", "#SBATCH --qos=regular", "#SBATCH --constraint=cpu",
                 "#SBATCH --ntasks-per-node=128", "#SBATCH --cpus-per-task=2", "#SBATCH --time=06:00:00",
                 "#SBATCH --output=/p/launches/x/slurm-%j.out", "module load vasp/6.4.3-cpu",
                 "export DFTFLOW_JOB_END=$(( $(date +%s) + 21600 ))", "export DFTFLOW_STOP_MARGIN=600"):
        assert line in script.splitlines(), line
    assert script.rstrip().endswith("-m dftflow rocket /p/launches/x")
    monkeypatch.delenv("DFTFLOW_DB_PASSWORD", raising=False)
    warned = json.loads(CliRunner().invoke(app, ["profiles", "check", "archer2", "--json"]).output)
    assert any("DFTFLOW_DB_PASSWORD" in w for w in warned["warnings"])
    assert "#SBATCH --hint=nomultithread" in warned["script"]
    local = json.loads(CliRunner().invoke(app, ["profiles", "check", "local", "--json"]).output)
    assert local["script"] is None and local["warnings"] == []


def test_a_stop_margin_as_long_as_the_walltime_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "name: p\nscheduler: slurm\nslurm:\n  walltime: '00:10:00'\n  stop_margin_s: 600\n",
                 "p.yaml")
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    assert str(path) in str(err.value) and "stop_margin_s (600 s) must be shorter than the walltime" in str(err.value)


def test_the_stop_margin_in_force_comes_from_the_batch_script_or_the_one_default(monkeypatch) -> None:
    from dftflow.config.profile import DEFAULT_STOP_MARGIN_S, SlurmSettings, stop_margin_s

    monkeypatch.delenv("DFTFLOW_STOP_MARGIN", raising=False)
    assert stop_margin_s() == DEFAULT_STOP_MARGIN_S == SlurmSettings().stop_margin_s
    monkeypatch.setenv("DFTFLOW_STOP_MARGIN", "45")
    assert stop_margin_s() == 45
    monkeypatch.setenv("DFTFLOW_STOP_MARGIN", "five minutes")
    with pytest.raises(ConfigError, match="DFTFLOW_STOP_MARGIN='five minutes'"):
        stop_margin_s()


@pytest.mark.parametrize("raw, says", [(b"name: x\xff\n", "line 1: not UTF-8 text (byte 0xff)"),
                                       (b"name: a\n\nb: c\x07d\n", "line 3: invalid YAML (control character 0x07)"),
                                       (b"a: [1,\n", "line 2: invalid YAML")])
def test_every_yaml_file_error_is_one_line_naming_the_file(tmp_path: Path, raw: bytes, says: str) -> None:
    from dftflow.config.base import read_yaml
    from dftflow.errors import ConfigError

    path = tmp_path / "profile.yaml"  # profiles, input sets and recipes all read through read_yaml
    path.write_bytes(raw)
    with pytest.raises(ConfigError) as err:
        read_yaml(path)
    assert str(err.value).startswith(f"{path}: {says}") and "\n" not in str(err.value), str(err.value)
