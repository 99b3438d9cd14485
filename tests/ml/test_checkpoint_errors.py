"""A bad checkpoint file is one CheckpointError naming the file and what is wrong, never a pickle traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from pymatgen.core import Lattice, Structure

import dftflow.models as registry
from dftflow.cli.app import main
from dftflow.errors import DftflowError, InputError
from dftflow.ml.checkpoint import CHECKPOINT_FORMAT, CheckpointError, TrainState, load_checkpoint, save_checkpoint
from dftflow.ml.config import TrainConfig
from dftflow.ml.model import build_model
from dftflow.ml.predict import load_model

TINY = {"num_interactions": 1, "mul": 8, "lmax": 1, "num_basis": 6, "radial_neurons": 8}


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A real checkpoint of an untrained tiny ChargE3Net, as `dftflow train` writes it."""
    torch.manual_seed(0)
    model = build_model(TINY)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint_last.pt"
    save_checkpoint(path, model, optimizer, scheduler, TrainState(step=3), TrainConfig.model_validate({"model": TINY}),
                    {"saed": None, "target": "total", "train_numbers": [14], "train_materials": 1})
    return path


def _entry_offset(path: Path, part: str) -> tuple[int, int]:
    """Where the bytes of the largest entry of the checkpoint's zip archive named ``*part*`` start, and how many."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if part in i.filename), key=lambda i: i.file_size)
    raw = path.read_bytes()
    name_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def _flip(good: Path, path: Path, part: str, mask: int) -> None:
    raw = bytearray(good.read_bytes())
    start, size = _entry_offset(good, part)
    for i in range(start + size // 2, start + size // 2 + 4):
        raw[i] ^= mask
    path.write_bytes(bytes(raw))


def truncated(good: Path, path: Path) -> None:
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])


def cut_at_the_end(good: Path, path: Path) -> None:
    path.write_bytes(good.read_bytes()[:-20])


def flipped_weights(good: Path, path: Path) -> None:
    """A few flipped bits in a weight tensor: ``torch.load`` reads it; only the zip's checksums can tell."""
    _flip(good, path, "/data/", 0x10)


def flipped_pickle(good: Path, path: Path) -> None:
    """Flipped bytes in the middle of the pickled dict."""
    _flip(good, path, "/data.pkl", 0xFF)


def empty(good: Path, path: Path) -> None:
    path.write_bytes(b"")


def plain_tensor(good: Path, path: Path) -> None:
    torch.save(torch.zeros(3), path)


def dict_without_weights(good: Path, path: Path) -> None:
    torch.save({"weights": torch.zeros(3), "step": 1}, path)


def text_file(good: Path, path: Path) -> None:
    path.write_text("model: not a checkpoint\n")


def legacy_pickle_cut_short(good: Path, path: Path) -> None:
    """torch's pre-zip format (a bare pickle stream), cut short."""
    torch.save(torch.load(good, weights_only=False), path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:1000])


def newer_format(good: Path, path: Path) -> None:
    ckpt = torch.load(good, weights_only=False)
    ckpt["format"] = CHECKPOINT_FORMAT + 1
    ckpt["versions"]["dftflow"] = "9.0"
    torch.save(ckpt, path)


def unknown_model_setting(good: Path, path: Path) -> None:
    ckpt = torch.load(good, weights_only=False)
    ckpt["model_config"]["attention_heads"] = 4
    ckpt["versions"]["dftflow"] = "9.0"
    torch.save(ckpt, path)


#: how the file is spoiled → what the message says after "<file>: "
BROKEN = {
    truncated: r"truncated checkpoint \(\d+ bytes; the zip archive's directory at its end is missing or damaged",
    cut_at_the_end: r"truncated checkpoint \(\d+ bytes; the zip archive's directory at its end is missing",
    flipped_weights: r"corrupt checkpoint \(\d+ bytes; the checksum of \S+/data/\d+ does not match",
    flipped_pickle: r"corrupt checkpoint \(\d+ bytes; the checksum of \S+/data.pkl does not match its bytes",
    empty: r"empty file \(0 bytes\), not a checkpoint",
    plain_tensor: r"not a dftflow checkpoint \(it holds a Tensor, not a dict with model and model_config\)",
    dict_without_weights: r"not a dftflow checkpoint \(no model or model_config entry; it has weights, step\)",
    text_file: r"not a checkpoint file \(it starts with b'model: n'; torch writes a zip archive\)",
    legacy_pickle_cut_short: r"truncated or corrupt checkpoint \(1000 bytes; (EOFError|UnpicklingError)",
    newer_format: rf"checkpoint format {CHECKPOINT_FORMAT + 1} written by dftflow 9.0; this dftflow \S+ reads "
                  rf"format {CHECKPOINT_FORMAT} and older \(upgrade dftflow\)",
    unknown_model_setting: r"model_config.attention_heads: unknown setting; the checkpoint was written by "
                           r"dftflow 9.0, which this dftflow \S+ cannot read",
}


@pytest.mark.parametrize("spoil", list(BROKEN), ids=lambda f: f.__name__)
def test_a_bad_checkpoint_is_one_error_naming_the_file(spoil, good: Path, tmp_path: Path) -> None:
    path = tmp_path / f"{spoil.__name__}.pt"
    spoil(good, path)
    for load in (load_checkpoint, load_model):
        with pytest.raises(CheckpointError) as err:
            load(path)
        message = str(err.value)
        assert message.startswith(f"{path}: ") and "\n" not in message, message
        assert path.name in message
        assert re.fullmatch(BROKEN[spoil] + ".*", message[len(f"{path}: "):]), message
    assert isinstance(err.value, InputError) and isinstance(err.value, DftflowError)


def test_a_missing_checkpoint_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "gone.pt"
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: no such checkpoint file$"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(tmp_path))}: a directory, not a checkpoint file$"):
        load_checkpoint(tmp_path)


def test_weights_that_do_not_fit_their_settings(good: Path, tmp_path: Path) -> None:
    ckpt = torch.load(good, weights_only=False)
    ckpt["model_config"]["mul"] = 16
    path = tmp_path / "mismatch.pt"
    torch.save(ckpt, path)
    assert load_checkpoint(path)["model_config"]["mul"] == 16  # readable; the model cannot take the weights
    expected = r": its weights do not fit its model_config \(written by dftflow \S+\): size mismatch for "
    with pytest.raises(CheckpointError, match="^" + re.escape(str(path)) + expected):
        load_model(path)


def test_a_good_checkpoint_loads_with_its_format(good: Path) -> None:
    ckpt = load_checkpoint(good)
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["state"]["step"] == 3
    model, _ = load_model(good)
    assert not model.training
    legacy = dict(ckpt)
    del legacy["format"]  # checkpoints written before the entry existed are format 1
    legacy_path = good.with_name("legacy.pt")
    torch.save(legacy, legacy_path)
    assert load_checkpoint(legacy_path)["model_config"] == ckpt["model_config"]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([*args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_prints_one_line_for_a_broken_model(good: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    from dftflow.cli.common import err_console

    monkeypatch.setattr(err_console, "width", 400)  # the message on one line, as in a wide terminal
    broken = tmp_path / "broken.pt"
    truncated(good, broken)
    poscar = tmp_path / "Si.vasp"
    Structure(Lattice.cubic(5.43), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]]).to(filename=str(poscar))
    for args in (("predict", str(poscar), "--model", str(broken), "-o", str(tmp_path / "p")),
                 ("models", "show", str(broken))):
        code, out, err = cli(capsys, *args)
        assert code == 1 and out == "" and "Traceback" not in err, err
        first = err.splitlines()[0]
        assert first.startswith(f"error: {broken}: truncated checkpoint ("), err
        assert err.splitlines()[1:] == ["(run with --debug for the traceback)"]
    assert not (tmp_path / "p").exists()


def test_models_show_loads_what_it_shows(good: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """A checkpoint file shows what it knows of itself; a bundled model whose file was damaged is an error."""
    import json

    code, out, err = cli(capsys, "models", "show", str(good), "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["path"] == str(good) and shown["target"] == "total" and shown["engine"] is None
    assert shown["elements"] == ["Si"] and shown["checksum_ok"] is None and "dftflow" in shown["versions"]

    root = tmp_path / "models"
    registry.strip_checkpoint(good, root / "tiny.pt", engine="vasp")
    monkeypatch.setattr(registry, "registry", lambda: root)
    code, out, err = cli(capsys, "models", "show", "tiny", "--json")
    assert code == 0 and json.loads(out)["checksum_ok"] is True, err
    flipped_weights(root / "tiny.pt", root / "tiny.pt")
    code, out, err = cli(capsys, "models", "show", "tiny")
    assert code == 1 and out == ""
    assert err.startswith(f"error: {root / 'tiny.pt'}: corrupt checkpoint"), err
