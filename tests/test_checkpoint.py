"""Checkpoint loading is weights-only, strict, and fails with one line naming the file."""

from __future__ import annotations

import hashlib
import os
import pickle

import pytest
import torch

from byol_bench.backbone import build_resnet
from byol_bench.checkpoint import (
    CheckpointError,
    atomic_save,
    atomic_write_json,
    load_state_dict_strict,
    safe_load,
    sha256_file,
)


class _Exploit:
    """Unpickling this calls os.system: weights_only loading must refuse it without running it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# torch notes the raw pickle's protocol before refusing it; the refusal is what this test checks.
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_malicious_pickle_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": _Exploit(str(marker))}, handle)
    with pytest.raises(CheckpointError, match="refused to unpickle") as err:
        safe_load(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()
    # Same through torch.save's zip container.
    torch.save({"x": _Exploit(str(marker))}, tmp_path / "evil2.pth")
    with pytest.raises(CheckpointError, match="refused"):
        safe_load(tmp_path / "evil2.pth")
    assert not marker.exists()


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        safe_load(tmp_path / "nope.pth")
    (tmp_path / "notes.txt").write_text("hello, not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"notes\.txt: not a readable torch checkpoint"):
        safe_load(tmp_path / "notes.txt")
    atomic_save({"w": torch.ones(1000)}, tmp_path / "ok.pth")
    data = (tmp_path / "ok.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth"):
        safe_load(tmp_path / "cut.pth")


def test_round_trip_and_hash(tmp_path):
    state = build_resnet("resnet18").state_dict()
    path = atomic_save(state, tmp_path / "r18.pth")
    loaded = safe_load(path)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], v) for k, v in state.items())
    # ~45 MB: many chunks of the default 1 MiB, hashed as one byte string by hashlib.
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not list(tmp_path.glob(".*tmp"))  # no temp files left behind


# FIPS 180-2 test vectors (appendix B): message -> SHA-256.
FIPS_VECTORS = {
    b"abc": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq":
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
    b"a" * 1_000_000: "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
    b"": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
}


@pytest.mark.parametrize("chunk_bytes", [1 << 20, 4096, 1000, 7])
def test_sha256_of_known_files_for_any_chunk_size(tmp_path, chunk_bytes):
    """Chunks larger than the file, dividing it exactly (1000 into 10^6, 7 into 56) and leaving a remainder."""
    for i, (message, digest) in enumerate(FIPS_VECTORS.items()):
        path = tmp_path / f"vector{i}.bin"
        path.write_bytes(message)
        assert sha256_file(path, chunk_bytes=chunk_bytes) == digest, (len(message), chunk_bytes)
    # Every byte value, CR/LF included (a text-mode read would alter them), 3.5 chunks of 4096.
    data = bytes(range(256)) * 56
    (tmp_path / "binary.bin").write_bytes(data)
    assert sha256_file(tmp_path / "binary.bin", chunk_bytes=chunk_bytes) == hashlib.sha256(data).hexdigest()


def test_sha256_of_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pth: checkpoint file not found"):
        sha256_file(tmp_path / "nope.pth")


def test_strict_load_lists_missing_and_unexpected(tmp_path):
    model = build_resnet("resnet18")
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    load_state_dict_strict(model, state, "r18.pth", allowed_missing=("fc.weight", "fc.bias"))
    with pytest.raises(CheckpointError, match=r"missing keys \[fc.bias, fc.weight\]"):
        load_state_dict_strict(model, state, "r18.pth")
    r50 = {k: v for k, v in build_resnet("resnet50").state_dict().items() if not k.startswith("fc.")}
    with pytest.raises(CheckpointError, match=r"r50\.pth: shape mismatch"):
        load_state_dict_strict(model, r50, "r50.pth", allowed_missing=("fc.weight", "fc.bias"))
    extra = {**state, "projector.0.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"unexpected keys \[projector.0.weight\]"):
        load_state_dict_strict(model, extra, "x.pth", allowed_missing=("fc.weight", "fc.bias"))


def test_atomic_json_refuses_nan_and_keeps_old_file(tmp_path):
    path = atomic_write_json(tmp_path / "r.json", {"a": 1})
    with pytest.raises(ValueError):
        atomic_write_json(path, {"a": float("nan")})
    assert path.read_text().strip().endswith("}") and '"a": 1' in path.read_text()
