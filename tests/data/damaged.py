"""Damaged inputs for the fault tests: a PNG header claiming any size, a file cut in half."""

import os
import struct
import zlib


def png_header(width: int, height: int) -> bytes:
  """A PNG signature, IHDR (1-bit grey ``width x height``) and IEND, without pixel data: what a reader sees of a
  huge image before it decodes one pixel."""
  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
  ihdr = struct.pack('>IIBBBBB', width, height, 1, 0, 0, 0, 0)
  return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IEND', b'')


def truncate_half(path) -> None:
  """Cuts the file at ``path`` to half its size (a copy or a download cut short)."""
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)
