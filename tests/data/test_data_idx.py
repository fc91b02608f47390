"""IDX reader against hand-written files, and its errors on damaged ones."""

import gzip
import struct

import numpy as np
import pytest

from dgm_jax.data import idx
from dgm_jax.data.registry import DataError


def _idx_bytes(type_code, dims, payload):
  return bytes([0, 0, type_code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


class TestReadIdx:

  @pytest.mark.parametrize("compress", [False, True])
  def test_round_trip_uint8(self, tmp_path, compress):
    content = _idx_bytes(0x08, (2, 3), bytes([0, 1, 2, 253, 254, 255]))
    path = tmp_path / ("tiny.gz" if compress else "tiny")
    path.write_bytes(gzip.compress(content) if compress else content)
    values = idx.read_idx(path)
    assert values.dtype == np.uint8
    np.testing.assert_array_equal(values, [[0, 1, 2], [253, 254, 255]])

  def test_big_endian_int32_and_float32(self, tmp_path):
    (tmp_path / "ints").write_bytes(_idx_bytes(0x0C, (3,), struct.pack(">3i", -2, 70000, 5)))
    np.testing.assert_array_equal(idx.read_idx(tmp_path / "ints"), [-2, 70000, 5])
    (tmp_path / "floats").write_bytes(_idx_bytes(0x0D, (1, 2), struct.pack(">2f", 0.5, -3.25)))
    values = idx.read_idx(tmp_path / "floats")
    assert values.dtype == np.float32 and values.dtype.isnative
    np.testing.assert_array_equal(values, [[0.5, -3.25]])

  def test_truncated_gzip_names_the_file(self, tmp_path):
    content = _idx_bytes(0x08, (100, 28, 28), bytes(range(256)) * 306 + bytes(64))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    compressed = gzip.compress(content)
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz.*re-download"):
      idx.read_idx(path)

  def test_short_payload_names_the_file(self, tmp_path):
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(_idx_bytes(0x08, (10,), bytes(7)))
    with pytest.raises(DataError, match=r"labels-idx1-ubyte is truncated: 7 of 10.*re-download"):
      idx.read_idx(path)

  @pytest.mark.parametrize("content, match", [
      (b"\x00\x01\x08\x01" + bytes(8), "magic"),
      (b"\x00\x00\x07\x01" + bytes(8), "magic"),
      (b"\x00\x00\x08\x02\x00\x00", "header"),
      (_idx_bytes(0x08, (2,), bytes(3)), "1 bytes beyond"),
  ])
  def test_malformed_files(self, tmp_path, content, match):
    path = tmp_path / "bad"
    path.write_bytes(content)
    with pytest.raises(DataError, match=match):
      idx.read_idx(path)
