"""vtdbg's own readers for memory dumps and images (``dump:FILE``, bare paths).

Every reader turns its file into one :class:`~vtdbg.target.dumps.physmem.DumpTarget`: a
sorted run table mapping physical addresses to file offsets over a read-only memory map.
Headers are parsed with construct and checked against the file size before any page is
touched, so truncated or hostile files end with a :class:`~vtdbg.lib.errors.TargetError`
(or a warning, when the damage only removes memory) instead of a crash.
"""
