"""Raw physical-memory images: file offset = physical address.

Plain files are memory-mapped (4 GiB images cost nothing to open).  ``.gz`` images, such
as the embedded sample, are inflated on demand, only as far as the highest byte read so
far, and never beyond a hard cap, so decoding one VMCS near the start of a 64 MiB image
does not inflate all of it, and a gzip bomb ends with a clear error instead of
exhausting memory.
"""
from __future__ import annotations

import mmap
import os
import zlib
from typing import List, Optional, Tuple, Union

from vtdbg.lib.errors import MemoryReadError, TargetError
from vtdbg.target.base import Capability, Target

#: largest gzip-compressed image we inflate into memory
MAX_INFLATED_IMAGE = 1 << 30
_INPUT_CHUNK = 1 << 20
_OUTPUT_STEP = 256 << 10


class _GzipStream:
    """A gzip file inflated lazily into a growing buffer (multi-member files included)."""

    def __init__(self, path: str, limit: int) -> None:
        self.path = path
        self.limit = limit
        self.data = bytearray()
        self.done = False
        self._file = open(path, "rb")
        self._inflater = zlib.decompressobj(wbits=31)
        self._pending = b""

    def ensure(self, end: int) -> None:
        """Inflate until ``end`` bytes exist or the stream ends."""
        try:
            while len(self.data) < end and not self.done:
                if not self._pending:
                    self._pending = self._file.read(_INPUT_CHUNK)
                    if not self._pending:
                        if not self._inflater.eof:
                            raise TargetError("cannot read gzip image %s: the file is truncated" % self.path)
                        self._finish()
                        break
                room = self.limit + 1 - len(self.data)
                step = max(end - len(self.data), _OUTPUT_STEP)  # inflate little beyond what is asked
                self.data += self._inflater.decompress(self._pending, min(room, step))
                self._pending = self._inflater.unconsumed_tail
                if len(self.data) > self.limit:
                    raise TargetError("%s inflates to more than %d MiB; unpack it first"
                                      % (self.path, self.limit >> 20))
                if self._inflater.eof:
                    rest = self._inflater.unused_data + self._pending
                    self._pending = b""
                    if rest.strip(b"\0"):  # another gzip member follows
                        self._inflater = zlib.decompressobj(wbits=31)
                        self._pending = rest
                    elif not self._file.read(1):
                        self._finish()
                    else:
                        self._file.seek(-1, os.SEEK_CUR)
                        self._inflater = zlib.decompressobj(wbits=31)
        except zlib.error as exc:
            raise TargetError("cannot read gzip image %s: %s" % (self.path, exc)) from None

    def _finish(self) -> None:
        self.done = True
        self._file.close()

    def close(self) -> None:
        """Release the file."""
        if not self._file.closed:
            self._file.close()


class ImageTarget(Target):
    """A raw physical memory image (``image:FILE``), plain or gzip-compressed."""

    kind = "image"
    capabilities = Capability.PHYS_READ | Capability.VIRT_READ

    def __init__(self, path: str, inflate_limit: int = MAX_INFLATED_IMAGE) -> None:
        super().__init__("memory image %s" % path)
        self.path = path
        self._file = None
        self._map: Optional[Union[mmap.mmap, bytes]] = None
        self._gzip: Optional[_GzipStream] = None
        if not os.path.isfile(path):
            raise TargetError("no such image file: %s" % path)
        with open(path, "rb") as probe:
            magic = probe.read(2)
        if magic == b"\x1f\x8b":
            self._gzip = _GzipStream(path, inflate_limit)
            self._gzip.ensure(1)  # fail now on a file that is not gzip after all
        else:
            self._file = open(path, "rb")
            size = os.fstat(self._file.fileno()).st_size
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""

    @classmethod
    def from_bytes(cls, data: bytes, description: str = "in-memory image") -> ImageTarget:
        """An image over ``data`` (tests and embedded samples)."""
        self = cls.__new__(cls)
        Target.__init__(self, description)
        self.path = description
        self._file = None
        self._gzip = None
        self._map = bytes(data)
        return self

    @property
    def size(self) -> int:
        """Bytes in the image (inflates a gzip image completely)."""
        if self._gzip is not None:
            self._gzip.ensure(self._gzip.limit + 1)
            return len(self._gzip.data)
        return len(self._map) if self._map is not None else 0

    def read_phys(self, pa: int, size: int) -> bytes:
        """Bytes at file offset ``pa``; reads past the end raise :class:`MemoryReadError`."""
        if size < 0 or pa < 0:
            raise MemoryReadError(pa, size, "negative address or size")
        if self._gzip is not None:
            self._gzip.ensure(pa + size)
            data: Union[bytearray, mmap.mmap, bytes] = self._gzip.data
        elif self._map is None:
            raise MemoryReadError(pa, size, "image is closed")
        else:
            data = self._map
        if pa + size > len(data):
            raise MemoryReadError(pa, size, "beyond the end of the image (0x%x bytes)" % len(data))
        return bytes(data[pa:pa + size])

    def phys_view(self, pa: int, size: int) -> memoryview:
        """Zero-copy view for scanners (plain files); a gzip image gives a copy."""
        if self._gzip is not None or not isinstance(self._map, mmap.mmap):
            return memoryview(self.read_phys(pa, size))
        if pa < 0 or size < 0 or pa + size > len(self._map):
            raise MemoryReadError(pa, size, "beyond the end of the image (0x%x bytes)" % len(self._map))
        return memoryview(self._map)[pa:pa + size]

    def phys_ranges(self) -> List[Tuple[int, int]]:
        """The whole file is one run."""
        size = self.size
        return [(0, size)] if size else []

    def close(self) -> None:
        """Unmap and close the file."""
        if isinstance(self._map, mmap.mmap):
            try:
                self._map.close()
            except BufferError:  # a caller still holds a phys_view; the GC unmaps it later
                pass
        self._map = None
        if self._gzip is not None:
            self._gzip.close()
            self._gzip.data = bytearray()
            self._gzip.done = True
        if self._file is not None:
            self._file.close()
            self._file = None
