"""Reader for IDX files, the format of MNIST and Fashion-MNIST (section 4.5.2).

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number
of dimensions), one big-endian uint32 per dimension, then the values in C order,
big-endian. Files may be gzip-compressed (detected from their first bytes, not
their name). The reader checks the magic number, the dimensions and that the
payload has exactly the announced number of bytes, so a truncated download stops
the run with the file's name instead of producing silently short data.
"""

import gzip
import zlib

import numpy as np

from dgm_jax.data.registry import DataError

__all__ = ["read_idx"]

# IDX type code -> big-endian numpy dtype.
_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path):
  """Reads one IDX file (raw or gzip) into a numpy array.

  Args:
    path: file path.

  Returns:
    Array of the file's dimensions, e.g. uint8 ``[60000, 28, 28]`` for MNIST
    training images, in native byte order.

  Raises:
    DataError: unreadable, truncated or malformed file; the message names it.
  """
  data = _read_bytes(path)
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
    raise DataError(f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'none'})")
  dtype, num_dims = _DTYPES[data[2]], data[3]
  header_size = 4 + 4 * num_dims
  if num_dims == 0 or len(data) < header_size:
    raise DataError(f"{path}: IDX header announces {num_dims} dimensions but is cut short; "
                    "re-download the file")
  dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=num_dims, offset=4))
  expected = int(np.prod(dims)) * dtype.itemsize
  actual = len(data) - header_size
  if actual < expected:
    raise DataError(f"{path} is truncated: {actual} of {expected} data bytes for shape {dims}; "
                    "re-download the file")
  if actual > expected:
    raise DataError(f"{path} has {actual - expected} bytes beyond shape {dims}; "
                    "it is not a valid IDX file, re-download it")
  values = np.frombuffer(data, dtype, offset=header_size).reshape(dims)
  return values.astype(dtype.newbyteorder("="))


def _read_bytes(path):
  try:
    with open(path, "rb") as f:
      data = f.read()
    if data[:2] == _GZIP_MAGIC:
      data = gzip.decompress(data)
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise DataError(f"{path} is a damaged or truncated gzip file ({e}); re-download it") from e
  except OSError as e:
    raise DataError(f"cannot read {path}: {e}") from e
  return data
