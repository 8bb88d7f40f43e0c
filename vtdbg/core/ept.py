"""Walking EPT: translating guest-physical addresses, mapping a whole hierarchy, finding
hooks and the misconfigurations a CPU would exit on.

Bit layouts come from vtdbg/arch/data/bitfields.json ("eptp", "ept_pml4e", "ept_pdpte",
"ept_pdpte_1g", "ept_pde", "ept_pde_2m", "ept_pte"); the rules for misconfigurations follow
SDM 29.3.3.1 ("EPT Misconfigurations"): a present entry (any of bits 2:0 set, or bit 10
with mode-based execute control) is misconfigured when it allows writes without reads,
is execute-only on a CPU without that capability (IA32_VMX_EPT_VPID_CAP bit 0), sets a
reserved bit, or (as a leaf) names memory type 2, 3 or 7.

Hostile tables cannot make a walk run away: a translation visits at most five tables, a
full walk visits at most ``max_tables`` tables (shared tables count each time they are
reached), and a table that points back at one of its own ancestors is reported as a
cycle.  Either ends with :class:`EptError`.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from vtdbg.arch.bitfields import BitLayout, layout
from vtdbg.lib.errors import DecodeError, MemoryReadError

PhysReader = Callable[[int, int], bytes]

SDM_MISCONFIG = "SDM 29.3.3.1 (EPT Misconfigurations)"
LEVEL_NAMES = {5: "PML5E", 4: "PML4E", 3: "PDPTE", 2: "PDE", 1: "PTE"}
#: bytes mapped by one entry at each level
LEVEL_SPAN = {5: 1 << 48, 4: 1 << 39, 3: 1 << 30, 2: 1 << 21, 1: 1 << 12}
MEMORY_TYPES = {0: "UC", 1: "WC", 4: "WT", 5: "WP", 6: "WB"}
INVALID_MEMORY_TYPES = (2, 3, 7)
#: default bound on tables visited by a full walk (4 KiB each; 4096 tables map >= 8 GiB)
DEFAULT_MAX_TABLES = 4096
#: default bound on distinct ranges a map may hold (memory, and time on hostile tables)
DEFAULT_MAX_RANGES = 1 << 18
#: misconfigured entries kept in detail (the rest are only counted)
MAX_MISCONFIGS = 10000
ADDRESS_MASK = 0x000FFFFFFFFFF000


#: entries with the accessed (8) and dirty (9) flags cleared compare equal when they map alike
_AD_CLEAR = ((1 << 64) - 1) & ~0x300


def _run_length(entries: Tuple[int, ...], index: int, value: int, span: int) -> int:
    """How many entries from ``index`` on equal ``value``, ``value + span``, ...

    Galloping then binary search over prefix equality, each probe one C-speed tuple
    comparison, so the cost follows the run's length (a lone entry costs one comparison).
    """
    limit = len(entries) - index
    if limit < 2 or entries[index + 1] != value + span:
        return 1

    def same(count: int) -> bool:
        return entries[index:index + count] == tuple(range(value, value + count * span, span))

    good, probe = 2, 4
    while True:
        probe = min(probe, limit)
        if not same(probe):
            bad = probe
            break
        good = probe
        if probe == limit:
            return limit
        probe *= 2
    while bad - good > 1:
        middle = (good + bad) // 2
        if same(middle):
            good = middle
        else:
            bad = middle
    return good


class EptError(DecodeError):
    """The EPT hierarchy cannot be walked: a cycle, too many tables, or a bad EPTP."""


def _layouts() -> Dict[str, BitLayout]:
    names = ("eptp", "ept_pml4e", "ept_pdpte", "ept_pdpte_1g", "ept_pde", "ept_pde_2m", "ept_pte")
    return {name: layout(name) for name in names}


def _bits(lay: BitLayout, name: str) -> Tuple[int, int]:
    item = lay.field(name)
    return item.lsb, (1 << item.width) - 1


def _layout_for(level: int, leaf: bool) -> str:
    if level == 1:
        return "ept_pte"
    if level == 2:
        return "ept_pde_2m" if leaf else "ept_pde"
    if level == 3:
        return "ept_pdpte_1g" if leaf else "ept_pdpte"
    return "ept_pml4e"  # PML5E has the same shape


def decode_eptp(eptp: int) -> Dict[str, Any]:
    """EPTP fields by name, plus the problems VM entry would reject it for (SDM 27.2.1.1)."""
    lay = _layouts()["eptp"]
    raw: Dict[str, Any] = dict(lay.raw(eptp))
    problems = []
    if raw["memory_type"] not in (0, 6):
        problems.append("EPTP memory type %d is not UC (0) or WB (6)" % raw["memory_type"])
    if raw["walk_length_minus_1"] not in (3, 4):
        problems.append("EPTP walk length %d is not 4 or 5 levels" % (raw["walk_length_minus_1"] + 1))
    if (eptp >> 8) & 0xF:
        problems.append("EPTP reserved bits 11:8 are set")
    if eptp >> 52:
        problems.append("EPTP bits 63:52 are set (beyond any physical-address width)")
    raw["levels"] = raw["walk_length_minus_1"] + 1
    raw["root"] = eptp & ADDRESS_MASK
    raw["problems"] = problems
    return raw


@dataclass
class EptEntry:
    """One paging-structure entry met on a walk."""

    level: int
    index: int
    entry_pa: int
    value: int
    present: bool
    leaf: bool
    read: bool
    write: bool
    execute: bool
    user_execute: bool
    address: int
    memory_type: Optional[int] = None
    ignore_pat: Optional[bool] = None
    issues: List[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """PML4E, PDPTE, PDE, PTE (or PML5E)."""
        return LEVEL_NAMES[self.level]

    def to_json(self) -> Dict[str, Any]:
        """JSON shape of one level of `vtdbg ept GPA`."""
        return {"level": self.level, "name": self.name, "index": self.index, "entry_pa": self.entry_pa,
                "value": self.value, "present": self.present, "leaf": self.leaf, "read": self.read,
                "write": self.write, "execute": self.execute, "user_execute": self.user_execute,
                "address": self.address, "memory_type": self.memory_type, "ignore_pat": self.ignore_pat,
                "misconfigured": bool(self.issues), "issues": list(self.issues)}


@dataclass
class Translation:
    """The result of translating one guest-physical address."""

    gpa: int
    hpa: Optional[int]
    read: bool
    write: bool
    execute: bool
    user_execute: bool
    memory_type: Optional[int]
    page_size: Optional[int]
    levels: List[EptEntry]
    fault: Optional[str] = None
    ignore_pat: Optional[bool] = None

    @property
    def misconfigured(self) -> bool:
        """True when some entry on the path is an EPT misconfiguration."""
        return any(e.issues for e in self.levels)

    def to_json(self) -> Dict[str, Any]:
        """The `vtdbg ept GPA --json` contract (plus extras)."""
        return {"gpa": self.gpa, "hpa": self.hpa, "read": self.read, "write": self.write, "execute": self.execute,
                "user_execute": self.user_execute, "memory_type": self.memory_type,
                "memory_type_name": MEMORY_TYPES.get(self.memory_type) if self.memory_type is not None else None,
                "ignore_pat": self.ignore_pat, "page_size": self.page_size, "fault": self.fault,
                "misconfigured": self.misconfigured, "levels": [e.to_json() for e in self.levels]}


@dataclass
class MapRange:
    """A run of guest-physical memory mapped with the same rights and memory type to
    contiguous host-physical memory."""

    gpa: int
    size: int
    hpa: int
    read: bool
    write: bool
    execute: bool
    user_execute: bool
    memory_type: int
    ignore_pat: bool
    page_size: int

    @property
    def perms(self) -> str:
        """``rwx`` style rights (``u`` appended for user-execute)."""
        return ("r" if self.read else "-") + ("w" if self.write else "-") + ("x" if self.execute else "-") + \
            ("u" if self.user_execute else "")

    def attrs(self) -> Tuple[bool, bool, bool, bool, int, bool]:
        """What must agree for two ranges to merge (besides contiguity)."""
        return (self.read, self.write, self.execute, self.user_execute, self.memory_type, self.ignore_pat)

    def to_json(self) -> Dict[str, Any]:
        """JSON shape of one row of `vtdbg ept --map`."""
        return {"gpa": self.gpa, "size": self.size, "end": self.gpa + self.size, "hpa": self.hpa,
                "read": self.read, "write": self.write, "execute": self.execute, "user_execute": self.user_execute,
                "memory_type": self.memory_type, "memory_type_name": MEMORY_TYPES.get(self.memory_type),
                "ignore_pat": self.ignore_pat, "page_size": self.page_size}


@dataclass
class Misconfiguration:
    """An entry the CPU would raise an EPT misconfiguration for."""

    gpa: int
    level: int
    entry_pa: int
    value: int
    reasons: List[str]

    def to_json(self) -> Dict[str, Any]:
        """JSON shape of one misconfiguration."""
        return {"gpa": self.gpa, "level": self.level, "name": LEVEL_NAMES[self.level], "entry_pa": self.entry_pa,
                "value": self.value, "reasons": list(self.reasons), "sdm": SDM_MISCONFIG}


class EptWalker:
    """Walks the EPT hierarchy named by ``eptp`` with physical reads.

    ``caps`` is IA32_VMX_EPT_VPID_CAP when known (it decides whether execute-only and 1-GiB
    entries are legal); ``mbec`` says whether mode-based execute control is on (bit 10 then
    counts as a right); ``phys_bits`` is MAXPHYADDR (52 when unknown, so no address bit is
    called reserved that might not be).
    """

    def __init__(self, read_phys: PhysReader, eptp: int, caps: Optional[int] = None, mbec: bool = False,
                 phys_bits: int = 52, max_tables: int = DEFAULT_MAX_TABLES,
                 max_ranges: int = DEFAULT_MAX_RANGES) -> None:
        self.read_phys = read_phys
        self.eptp = eptp
        self.caps = caps
        self.mbec = mbec
        self.phys_bits = phys_bits
        self.max_tables = max_tables
        self.max_ranges = max_ranges
        self.misconfigured_entries = 0
        info = decode_eptp(eptp)
        self.levels = info["levels"] if info["walk_length_minus_1"] in (3, 4) else 4
        self.eptp_problems: List[str] = info["problems"]
        self.root = info["root"]
        self._tables: Dict[int, Tuple[int, ...]] = {}
        self.unreadable: List[int] = []
        self.tables_visited = 0
        #: an execute-only or 1-GiB entry was met while ``caps`` was unknown
        self.caps_unjudged = False
        self._walked: Optional[Tuple[List[MapRange], List[Misconfiguration]]] = None
        lays = _layouts()
        self._mt = _bits(lays["ept_pte"], "memory_type")
        self._ipat = _bits(lays["ept_pte"], "ignore_pat")
        self._ps = _bits(lays["ept_pde"], "ps")
        self._ux = _bits(lays["ept_pte"], "user_execute")

    # -- entries --------------------------------------------------------------------------
    def _table(self, pa: int) -> Tuple[int, ...]:
        cached = self._tables.get(pa)
        if cached is None:
            if len(self._tables) >= 4096:
                self._tables.clear()  # bound the cache, not the walk
            cached = struct.unpack("<512Q", self.read_phys(pa, 0x1000))
            self._tables[pa] = cached
        return cached

    def _present(self, value: int) -> bool:
        return bool(value & 7) or (self.mbec and bool(value >> self._ux[0] & 1))

    def _is_leaf(self, level: int, value: int) -> bool:
        if level == 1:
            return True
        if level in (2, 3):
            return bool(value >> self._ps[0] & 1)
        return False

    def _issues(self, level: int, value: int, leaf: bool) -> List[str]:
        """Why this present entry is an EPT misconfiguration ([] when it is fine)."""
        issues = []
        rights = value & 7
        if rights & 2 and not rights & 1:
            issues.append("write%s without read" % ("+execute" if rights & 4 else ""))
        if self.caps is None and (rights == 4 or (leaf and level == 3)):
            self.caps_unjudged = True
        if rights == 4 and self.caps is not None and not self.caps & 1:
            issues.append("execute-only, but IA32_VMX_EPT_VPID_CAP bit 0 says the CPU does not support it")
        reserved = 0
        if level >= 4:
            reserved |= 0xF8  # bits 7:3
        elif not leaf:
            reserved |= 0x78  # bits 6:3 (bit 7 is the page-size bit, 0 here)
        elif level == 3:
            reserved |= ((1 << 30) - 1) & ~0xFFF  # bits 29:12 of a 1-GiB leaf
        elif level == 2:
            reserved |= ((1 << 21) - 1) & ~0xFFF  # bits 20:12 of a 2-MiB leaf
        if self.phys_bits < 52:
            reserved |= ((1 << 52) - 1) & ~((1 << self.phys_bits) - 1)
        if value & reserved:
            issues.append("reserved bits set (0x%x)" % (value & reserved))
        if leaf and level == 3 and self.caps is not None and not self.caps >> 17 & 1:
            issues.append("1-GiB page, but IA32_VMX_EPT_VPID_CAP bit 17 says the CPU does not support them")
        if leaf:
            memory_type = value >> self._mt[0] & self._mt[1]
            if memory_type in INVALID_MEMORY_TYPES:
                issues.append("memory type %d is reserved" % memory_type)
        return issues

    def _entry(self, level: int, table_pa: int, index: int, value: int) -> EptEntry:
        present = self._present(value)
        leaf = present and self._is_leaf(level, value)
        span = LEVEL_SPAN[level]
        address = value & ADDRESS_MASK & ~(span - 1) if leaf else value & ADDRESS_MASK
        entry = EptEntry(level, index, table_pa + 8 * index, value, present, leaf, bool(value & 1),
                         bool(value & 2), bool(value & 4), bool(value >> self._ux[0] & 1), address)
        if leaf:
            entry.memory_type = value >> self._mt[0] & self._mt[1]
            entry.ignore_pat = bool(value >> self._ipat[0] & 1)
        if present:
            entry.issues = self._issues(level, value, leaf)
        return entry

    # -- one address ----------------------------------------------------------------------
    def translate(self, gpa: int) -> Translation:
        """Translate ``gpa``; every level met is in ``levels`` (like WinDbg's !pte)."""
        levels: List[EptEntry] = []
        table = self.root
        rights = [True, True, True, True]
        for level in range(self.levels, 0, -1):
            index = (gpa >> (12 + 9 * (level - 1))) & 0x1FF
            try:
                value = self._table(table)[index]
            except MemoryReadError:
                return Translation(gpa, None, False, False, False, False, None, None, levels,
                                   fault="the %s table at 0x%x is not in memory" % (LEVEL_NAMES[level], table))
            entry = self._entry(level, table, index, value)
            levels.append(entry)
            if not entry.present:
                return Translation(gpa, None, False, False, False, False, None, None, levels,
                                   fault="EPT violation: %s not present" % entry.name)
            rights = [rights[0] and entry.read, rights[1] and entry.write, rights[2] and entry.execute,
                      rights[3] and entry.user_execute]
            if entry.issues:
                return Translation(gpa, None, rights[0], rights[1], rights[2], rights[3], None, None, levels,
                                   fault="EPT misconfiguration at the %s: %s" % (entry.name, "; ".join(entry.issues)))
            if entry.leaf:
                span = LEVEL_SPAN[level]
                return Translation(gpa, entry.address | (gpa & (span - 1)), rights[0], rights[1], rights[2],
                                   rights[3], entry.memory_type, span, levels, ignore_pat=entry.ignore_pat)
            table = entry.address
        raise EptError("EPT walk did not end")  # pragma: no cover - level 1 is always a leaf

    def reader(self) -> PhysReader:
        """A reader of guest-physical memory: each access is translated through this EPT."""
        def read_gpa(gpa: int, size: int) -> bytes:
            out = bytearray()
            cursor, end = gpa, gpa + size
            while cursor < end:
                step = min(end - cursor, 0x1000 - (cursor & 0xFFF))
                result = self.translate(cursor)
                if result.hpa is None:
                    raise MemoryReadError(cursor, step, "guest-physical address not mapped by EPT (%s)" % result.fault)
                out += self.read_phys(result.hpa, step)
                cursor += step
            return bytes(out)
        return read_gpa

    # -- the whole hierarchy --------------------------------------------------------------
    def _reserved(self, level: int, leaf: bool) -> int:
        """Reserved-bit mask of an entry (see :meth:`_issues`)."""
        mask = 0
        if level >= 4:
            mask |= 0xF8
        elif not leaf:
            mask |= 0x78
        elif level == 3:
            mask |= ((1 << 30) - 1) & ~0xFFF
        elif level == 2:
            mask |= ((1 << 21) - 1) & ~0xFFF
        if self.phys_bits < 52:
            mask |= ((1 << 52) - 1) & ~((1 << self.phys_bits) - 1)
        return mask

    def _traverse(self) -> Tuple[List[MapRange], List[Misconfiguration]]:
        """One bounded pass over the hierarchy: merged leaf ranges and misconfigured
        entries.  Hot loop on plain ints; an EptEntry is built only for a bad entry."""
        if self._walked is not None:
            return self._walked
        self.tables_visited = 0
        self.misconfigured_entries = 0
        self.unreadable = []
        ranges: List[MapRange] = []
        misconfigs: List[Misconfiguration] = []
        reserved = {(level, leaf): self._reserved(level, leaf) for level in range(1, 6) for leaf in (False, True)}
        caps_known = self.caps is not None
        exec_only_ok = caps_known and bool(self.caps & 1)  # type: ignore[operator]
        one_gig_ok = caps_known and bool(self.caps >> 17 & 1)  # type: ignore[operator]
        rights_bits = 0x407 if self.mbec else 0x7
        present_bits = rights_bits

        def bad(level: int, value: int, leaf: bool) -> bool:
            perms = value & 7
            if not caps_known and (perms == 4 or (leaf and level == 3)):
                self.caps_unjudged = True
            return bool(perms & 3 == 2 or value & reserved[(level, leaf)]
                        or (perms == 4 and caps_known and not exec_only_ok)
                        or (leaf and (((value >> 3) & 7) in INVALID_MEMORY_TYPES
                                      or (level == 3 and caps_known and not one_gig_ok))))

        def add(gpa: int, size: int, span: int, hpa: int, value: int, rights: int) -> None:
            mine = rights & (value & rights_bits)
            memory_type = (value >> 3) & 7
            ipat = bool(value & 0x40)
            last = ranges[-1] if ranges else None
            if last is not None and last.gpa + last.size == gpa and last.hpa + last.size == hpa \
                    and last.memory_type == memory_type and last.ignore_pat == ipat \
                    and last.read == bool(mine & 1) and last.write == bool(mine & 2) \
                    and last.execute == bool(mine & 4) and last.user_execute == bool(mine & 0x400):
                last.size += size
                last.page_size = min(last.page_size, span)
            else:
                if len(ranges) >= self.max_ranges:
                    raise EptError("EPT map has more than %d distinct ranges (a hostile or absurd hierarchy; "
                                   "translate single addresses instead)" % self.max_ranges)
                ranges.append(MapRange(gpa, size, hpa, bool(mine & 1), bool(mine & 2), bool(mine & 4),
                                       bool(mine & 0x400), memory_type, ipat, span))

        def visit(table: int, level: int, base: int, path: Tuple[int, ...], rights: int) -> None:
            if table in path:
                raise EptError("EPT cycle: an entry of the table at 0x%x (GPA 0x%x) points back to the table at "
                               "0x%x above it" % (path[-1], base, table))
            self.tables_visited += 1
            if self.tables_visited > self.max_tables:
                raise EptError("EPT walk stopped after %d tables (cyclic, shared or absurdly large tables; raise "
                               "--max-tables to go further)" % self.max_tables)
            try:
                entries = self._table(table)
            except MemoryReadError:
                self.unreadable.append(table)
                return
            span = LEVEL_SPAN[level]
            can_be_leaf = level <= 3
            # accessed/dirty flags differ from entry to entry without changing the mapping
            masked = tuple(v & _AD_CLEAR for v in entries)
            present = [i for i, v in enumerate(masked) if v & present_bits]
            pos = 0
            while pos < len(present):
                index = present[pos]
                value = masked[index]
                leaf = level == 1 or (can_be_leaf and bool(value & 0x80))
                if bad(level, value, leaf):
                    self.misconfigured_entries += 1
                    if len(misconfigs) >= MAX_MISCONFIGS:
                        pos += 1
                        continue
                    entry = self._entry(level, table, index, entries[index])
                    misconfigs.append(Misconfiguration(base + index * span, level, entry.entry_pa, entries[index],
                                                       entry.issues))
                    pos += 1
                    continue
                gpa = base + index * span
                if not leaf:
                    visit(value & ADDRESS_MASK, level - 1, gpa, path + (table,), rights & (value & rights_bits))
                    pos += 1
                    continue
                # a run of leaves that differ only by their address, one span apart, is one
                # block: found with C-speed tuple comparisons instead of an entry-by-entry loop
                count = _run_length(masked, index, value, span)
                if count > 1 and bad(level, masked[index + count - 1], leaf):
                    count = 1
                add(gpa, count * span, span, value & ADDRESS_MASK & ~(span - 1), value, rights)
                pos += count

        visit(self.root, self.levels, 0, (), 0x407)
        self._walked = (ranges, misconfigs)
        return self._walked

    def merged_map(self) -> List[MapRange]:
        """Leaf mappings in GPA order with their effective rights (the AND of every level),
        neighbours merged when rights, memory type and the host side all continue.
        Raises :class:`EptError` on a cycle or past ``max_tables`` tables."""
        return [MapRange(**vars(r)) for r in self._traverse()[0]]

    def misconfigurations(self, limit: int = 1000) -> List[Misconfiguration]:
        """Entries that would cause EPT-misconfiguration exits (at most ``limit``)."""
        return list(self._traverse()[1][:limit])


def find_hooks(ranges: List[MapRange], max_size: int = 1 << 21) -> List[Dict[str, Any]]:
    """Small ranges that differ from both neighbours which agree with each other: pages
    whose rights were changed (execute-only code pages, write-protected data) or that map
    somewhere else than their neighbours' pattern (split views), as EPT hooks do."""
    hooks: List[Dict[str, Any]] = []
    for index in range(1, len(ranges) - 1):
        prev, cur, nxt = ranges[index - 1], ranges[index], ranges[index + 1]
        if prev.gpa + prev.size != cur.gpa or cur.gpa + cur.size != nxt.gpa or cur.size > max_size:
            continue
        doc = cur.to_json()
        if prev.attrs() == nxt.attrs() and cur.attrs() != prev.attrs():
            doc["kind"] = "permissions"
            doc["reason"] = "%s where the neighbouring pages are %s" % (cur.perms, prev.perms)
            if cur.memory_type != prev.memory_type:
                doc["reason"] += " (memory type %s, neighbours %s)" % (MEMORY_TYPES.get(cur.memory_type, "?"),
                                                                        MEMORY_TYPES.get(prev.memory_type, "?"))
            hooks.append(doc)
            continue
        offset_prev = prev.hpa - prev.gpa
        offset_next = nxt.hpa - nxt.gpa
        if offset_prev == offset_next and cur.hpa - cur.gpa != offset_prev:
            doc["kind"] = "redirect"
            doc["reason"] = "maps to 0x%x where the neighbours' pattern gives 0x%x" % (cur.hpa, cur.gpa + offset_prev)
            hooks.append(doc)
    return hooks


def ept_summary(walker: EptWalker) -> Dict[str, Any]:
    """Size, table count and problems of a hierarchy (for `scan` and `triage`)."""
    doc: Dict[str, Any] = {"eptp": walker.eptp, "root": walker.root, "levels": walker.levels,
                           "eptp_problems": list(walker.eptp_problems)}
    try:
        ranges = walker.merged_map()
        misconfigs = walker.misconfigurations(limit=100)
    except EptError as exc:
        doc.update({"error": str(exc), "mapped_bytes": None, "ranges": None, "tables": walker.tables_visited})
        return doc
    doc.update({"mapped_bytes": sum(r.size for r in ranges), "ranges": len(ranges), "tables": walker.tables_visited,
                "misconfigurations": max(len(misconfigs), walker.misconfigured_entries),
                "hooks": len(find_hooks(ranges)),
                "unreadable_tables": list(walker.unreadable)})
    return doc


def hpa_to_gpa(ranges: List[MapRange], hpa: int) -> Optional[int]:
    """A guest-physical address that maps to ``hpa`` (the first one, in GPA order)."""
    for item in ranges:
        if item.hpa <= hpa < item.hpa + item.size:
            return item.gpa + (hpa - item.hpa)
    return None


def translate_gva(walker: EptWalker, guest_cr3: int, gva: int, levels: int = 4) -> Dict[str, Any]:
    """Guest-virtual -> guest-physical (through the guest's page tables, each table read
    through EPT) -> host-physical (through EPT).  Raises MemoryReadError when the guest
    tables do not map ``gva``."""
    from vtdbg.target.paging import translate as guest_translate

    reader = walker.reader()
    gpa, walk = guest_translate(reader, guest_cr3, gva, levels)
    names = {5: "PML5E", 4: "PML4E", 3: "PDPTE", 2: "PDE", 1: "PTE"}
    guest_levels = []
    for depth, (entry_gpa, value) in enumerate(walk):
        level = levels - depth
        guest_levels.append({"level": level, "name": names[level], "entry_gpa": entry_gpa,
                             "entry_hpa": walker.translate(entry_gpa).hpa, "value": value})
    final = walker.translate(gpa)
    doc = final.to_json()
    return {"gva": gva, "guest_cr3": guest_cr3, "gpa": gpa, "hpa": final.hpa, "read": final.read,
            "write": final.write, "execute": final.execute, "memory_type": final.memory_type,
            "guest_levels": guest_levels, "levels": doc["levels"], "fault": final.fault, "ept": doc}
