import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from anima_context.context import ReferenceContext
from anima_context.context_file import confined_path, load_context, save_context
from anima_context.errors import InvalidContextFileError


def _context(blocks=10, tokens=4, width=32):
    meta = {"steps": 5, "lift": 0.25, "prompt": "girl", "num_blocks": blocks, "width": width, "loss_curve": [1.0, 0.5]}
    return ReferenceContext(torch.randn(blocks, tokens, width), meta)


def test_round_trip_keeps_tokens_and_metadata(tmp_path):
    context = _context()
    path = save_context(context, tmp_path / "ctx.safetensors")
    loaded = load_context(path)
    assert torch.equal(loaded.tokens, context.tokens)
    assert loaded.metadata == context.metadata
    assert path.read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle


@pytest.mark.parametrize("name", ["../evil", "../../etc/passwd", "/tmp/evil", "a/../../evil", "", "bad\x00name"])
def test_names_that_leave_the_folder_are_refused(tmp_path, name):
    with pytest.raises(InvalidContextFileError, match="Invalid context file"):
        confined_path(tmp_path / "contexts", name)
    assert not any(tmp_path.parent.glob("evil*"))


def test_plain_names_stay_inside_and_get_the_suffix(tmp_path):
    path = confined_path(tmp_path, "hero_00001")
    assert path == (tmp_path / "hero_00001.safetensors").resolve()


def _write(path, tensors, metadata):
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    "tensors, metadata, words",
    [
        ({"tokens": torch.randn(10, 4)}, {"anima_fasttrain": "{}"}, "shape"),
        ({"tokens": torch.randn(10, 4, 32, 1)}, {"anima_fasttrain": "{}"}, "shape"),
        ({"tokens": torch.zeros(2, 2, 2, dtype=torch.int64)}, {"anima_fasttrain": "{}"}, "dtype"),
        ({"weights": torch.randn(2, 2, 2)}, {"anima_fasttrain": "{}"}, "not an AnimaFastTrain context"),
        ({"tokens": torch.randn(2, 2, 2), "extra": torch.ones(1)}, {"anima_fasttrain": "{}"}, "not an AnimaFastTrain context"),
        ({"tokens": torch.randn(2, 2, 2)}, {}, "no AnimaFastTrain metadata"),
        ({"tokens": torch.randn(2, 2, 2)}, {"anima_fasttrain": "{not json"}, "unreadable metadata"),
        ({"tokens": torch.randn(2, 2, 2)}, {"anima_fasttrain": json.dumps({"num_blocks": 28})}, "metadata says num_blocks 28"),
        ({"tokens": torch.full((2, 2, 2), float("nan"))}, {"anima_fasttrain": "{}"}, "NaN"),
        ({"tokens": torch.randn(200, 1, 2)}, {"anima_fasttrain": "{}"}, "num_blocks is 200"),
    ],
)
def test_bad_files_are_refused_with_a_clear_message(tmp_path, tensors, metadata, words):
    path = _write(tmp_path / "bad.safetensors", tensors, metadata)
    with pytest.raises(InvalidContextFileError) as caught:
        load_context(path)
    assert str(caught.value).startswith("Invalid context file") and words in str(caught.value)


def test_truncated_and_forged_headers_are_refused(tmp_path):
    good = save_context(_context(), tmp_path / "good.safetensors").read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good[: len(good) // 2])
    forged = tmp_path / "forged.safetensors"  # the header claims a huge tensor the file does not hold
    header = json.dumps({"tokens": {"dtype": "F32", "shape": [100000, 100000, 100], "data_offsets": [0, 4 * 10**12]}}).encode()
    forged.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    for path in (truncated, forged, garbage):
        with pytest.raises(InvalidContextFileError, match="not a readable .safetensors file"):
            load_context(path)


def test_a_missing_or_oversized_file_is_refused(tmp_path):
    with pytest.raises(InvalidContextFileError, match="does not exist"):
        load_context(tmp_path / "nothing.safetensors")
