"""Raw physical-memory images: file offset = physical address.

Plain files are memory-mapped (4 GiB images cost nothing to open).  ``.gz`` images, such
as the embedded sample, are inflated into memory with a hard size cap, so a gzip bomb
ends with a clear error instead of exhausting memory.
"""
from __future__ import annotations

import gzip
import mmap
import os
from typing import List, Optional, Tuple, Union

from vtdbg.lib.errors import MemoryReadError, TargetError
from vtdbg.target.base import Capability, Target

#: largest gzip-compressed image we inflate into memory
MAX_INFLATED_IMAGE = 1 << 30


def _inflate(path: str, limit: int) -> bytes:
    out = bytearray()
    try:
        with gzip.open(path, "rb") as handle:
            while True:
                chunk = handle.read(1 << 20)
                if not chunk:
                    break
                out += chunk
                if len(out) > limit:
                    raise TargetError("%s inflates to more than %d MiB; unpack it first" % (path, limit >> 20))
    except (OSError, EOFError) as exc:
        raise TargetError("cannot read gzip image %s: %s" % (path, exc)) from None
    return bytes(out)


class ImageTarget(Target):
    """A raw physical memory image (``image:FILE``)."""

    kind = "image"
    capabilities = Capability.PHYS_READ | Capability.VIRT_READ

    def __init__(self, path: str, inflate_limit: int = MAX_INFLATED_IMAGE) -> None:
        super().__init__("memory image %s" % path)
        self.path = path
        self._file = None
        self._map: Optional[Union[mmap.mmap, bytes]] = None
        if not os.path.isfile(path):
            raise TargetError("no such image file: %s" % path)
        with open(path, "rb") as probe:
            magic = probe.read(2)
        if magic == b"\x1f\x8b":
            self._map = _inflate(path, inflate_limit)
        else:
            self._file = open(path, "rb")
            size = os.fstat(self._file.fileno()).st_size
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        self.size = len(self._map)

    @classmethod
    def from_bytes(cls, data: bytes, description: str = "in-memory image") -> ImageTarget:
        """An image over ``data`` (tests and embedded samples)."""
        self = cls.__new__(cls)
        Target.__init__(self, description)
        self.path = description
        self._file = None
        self._map = bytes(data)
        self.size = len(data)
        return self

    def read_phys(self, pa: int, size: int) -> bytes:
        """Bytes at file offset ``pa``; reads past the end raise :class:`MemoryReadError`."""
        if size < 0 or pa < 0:
            raise MemoryReadError(pa, size, "negative address or size")
        if self._map is None:
            raise MemoryReadError(pa, size, "image is closed")
        if pa + size > self.size:
            raise MemoryReadError(pa, size, "beyond the end of the image (0x%x bytes)" % self.size)
        return bytes(self._map[pa:pa + size])

    def phys_ranges(self) -> List[Tuple[int, int]]:
        """The whole file is one run."""
        return [(0, self.size)] if self.size else []

    def close(self) -> None:
        """Unmap and close the file."""
        if isinstance(self._map, mmap.mmap):
            self._map.close()
        self._map = None
        if self._file is not None:
            self._file.close()
            self._file = None
