"""Per-CPU VMX regions of the hypervisor under test, found through a target profile.

For each logical processor: the VMXON region, the VMCS, the VMM stack, the MSR bitmap and
the EPT pointer, plus the VMX root-mode verdict (vtdbg.core.rootmode).  The profile says
where the per-CPU state lives (a global symbol, usually a POINTER to a pool array whose
length is the active processor count) and which fields hold what; symbols come from
``Target.symbol``, field offsets from ``Target.field_offset`` when the debugger has the
driver's types, otherwise from the offsets written in the profile.

Transactions are kept few: symbols and offsets are resolved once per call, each CPU's
structure is read with one ``read_virt`` of the span the wanted fields cover.

Without symbols (images, dumps without a module list) the regions come from a physical
scan for VMCS pages instead (CPU n = the nth VMCS found, shared/DESIGN.md "CPUs").

``find_regions(target, cpu=None)`` is the entry point other commands use (vmcs without
--at, trace, live VMREAD).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from vtdbg.core.rootmode import CodeRange, Evidence, RootModeVerdict, judge, symbol_at
from vtdbg.lib.errors import CapabilityError, TargetError, UsageError, VtdbgError
from vtdbg.profiles import FieldSpec, Locator, Profile, ProfileError, Step, all_profiles, get_profile
from vtdbg.target.base import Capability, Target

#: roles that become top-level keys of the JSON (role -> key); other profile fields go under "fields"
_MAIN_ROLES = {"vmxon": "vmxon_pa", "vmcs": "vmcs_pa", "vmm_stack": "vmm_stack", "msr_bitmap": "msr_bitmap_pa",
               "eptp": "eptp", "root_mode_flag": "root_mode_flag"}
#: bits checked before trusting VMCS pointer fields (SDM 25.6.2 / Linux names)
_USE_MSR_BITMAPS = 1 << 28
_ACTIVATE_SECONDARY = 1 << 31
_ENABLE_EPT = 1 << 1
#: refuse absurd spans (a corrupt offset would otherwise ask the debugger for megabytes)
_MAX_SPAN = 0x10000
#: refuse absurd CPU counts read from memory
_MAX_CPUS = 4096


@dataclass
class CpuRegions:
    """What vtdbg knows about one CPU's VMX state.  None = unknown."""

    cpu: int
    profile: Optional[str]
    vmxon_pa: Optional[int] = None
    vmcs_pa: Optional[int] = None
    vmm_stack: Optional[int] = None
    vmm_stack_size: Optional[int] = None
    msr_bitmap_pa: Optional[int] = None
    eptp: Optional[int] = None
    root_mode: Optional[bool] = None
    root_mode_evidence: List[Evidence] = field(default_factory=list)
    per_cpu_address: Optional[int] = None
    fields: Dict[str, int] = field(default_factory=dict)
    sources: Dict[str, str] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    error: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        """The `vtdbg regions` JSON object for this CPU (``{"cpu", "error"}`` on failure)."""
        if self.error is not None:
            return {"cpu": self.cpu, "profile": self.profile, "error": self.error}
        return {
            "cpu": self.cpu, "profile": self.profile,
            "vmxon_pa": self.vmxon_pa, "vmcs_pa": self.vmcs_pa,
            "vmm_stack": self.vmm_stack, "vmm_stack_size": self.vmm_stack_size,
            "msr_bitmap_pa": self.msr_bitmap_pa, "eptp": self.eptp,
            "root_mode": self.root_mode, "root_mode_evidence": [e.to_json() for e in self.root_mode_evidence],
            "per_cpu_address": self.per_cpu_address, "fields": dict(self.fields),
            "sources": dict(self.sources), "warnings": list(self.warnings),
        }


@dataclass
class Detection:
    """Which profile fits a target, and the runners-up."""

    profile: Optional[Profile]
    module: Optional[str]
    candidates: List[Tuple[str, int]]  # (name, score) of every profile that matched
    warnings: List[str] = field(default_factory=list)


# -- symbols and types ---------------------------------------------------------------------
def _module_key(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    for ext in (".sys", ".dll", ".exe"):
        if base.lower().endswith(ext):
            base = base[: -len(ext)]
    return base.lower()


def loaded_modules(target: Target) -> Optional[Dict[str, Tuple[str, int, int]]]:
    """Loaded modules keyed by lower-case base name, or None when the target has no list."""
    try:
        mods = target.modules()
    except (CapabilityError, TargetError):
        return None
    return {_module_key(name): (name, base, size) for name, base, size in mods}


class _Resolver:
    """Symbol, type and memory access for one profile, cached for one command."""

    def __init__(self, target: Target, profile: Profile, module: Optional[str],
                 symbols: Optional[Dict[str, Optional[int]]] = None) -> None:
        self.target = target
        self.profile = profile
        self.module = module
        #: shared between the resolvers of one command: profiles probe the same symbols
        self._symbols: Dict[str, Optional[int]] = symbols if symbols is not None else {}
        self._cr3: Optional[int] = None
        self._cr3_known = False
        self._offsets: Dict[Tuple[str, Tuple[str, ...]], Tuple[Optional[int], str]] = {}
        self._sizes: Dict[str, Optional[int]] = {}
        self.warnings: List[str] = []

    def _qualify(self, name: str) -> str:
        if "!" in name or not self.module:
            return name
        return "%s!%s" % (self.module, name)

    def symbol(self, names: Sequence[str]) -> Optional[Tuple[str, int]]:
        """The first of ``names`` the debugger resolves, with its address."""
        for name in names:
            qualified = self._qualify(name)
            if qualified not in self._symbols:
                try:
                    self._symbols[qualified] = self.target.symbol(qualified)
                except CapabilityError:
                    raise
                except VtdbgError:
                    self._symbols[qualified] = None
            address = self._symbols[qualified]
            if address is not None:
                return name, address
        return None

    def resolves(self, spec: str) -> bool:
        """A detect entry: ``A|B`` is true when either symbol resolves."""
        return self.symbol([s.strip() for s in spec.split("|") if s.strip()]) is not None

    def offset(self, type_name: Optional[str], names: Sequence[str],
               fallback: Optional[int]) -> Tuple[Optional[int], str]:
        """Field offset from type information, else the profile's; and which one it was."""
        key = (type_name or "", tuple(names))
        if key not in self._offsets:
            found: Tuple[Optional[int], str] = (None, "unknown")
            if type_name:
                for name in names:
                    try:
                        value = self.target.field_offset(self._qualify(type_name), name)
                    except VtdbgError:  # no type information, or the backend refused
                        value = None
                    if value is not None:
                        found = (int(value), "type information")
                        break
            if found[0] is None and fallback is not None:
                found = (fallback, "profile offset")
            self._offsets[key] = found
        return self._offsets[key]

    def type_size(self, type_name: Optional[str], fallback: Optional[int]) -> Optional[int]:
        """sizeof(type) from the backend when it offers ``type_size``, else the profile's."""
        key = type_name or ""
        if key not in self._sizes:
            size: Optional[int] = None
            lookup = getattr(self.target, "type_size", None)
            if type_name and callable(lookup):
                try:
                    value = lookup(self._qualify(type_name))
                    size = int(value) if value else None
                except Exception:  # an optional backend method: a failure only loses the clue
                    size = None
            self._sizes[key] = size if size is not None else fallback
        return self._sizes[key]

    def to_phys(self, va: int) -> Optional[int]:
        """Physical address of kernel ``va`` (CR3 read once per command: a full register
        read is many debugger transactions on pykd)."""
        if not self._cr3_known:
            self._cr3_known = True
            if not callable(getattr(self.target, "virt_to_phys", None)) and self.target.has(Capability.REGS):
                try:
                    self._cr3 = self.target.registers().get("cr3")
                except VtdbgError:
                    self._cr3 = None
        return virt_to_phys(self.target, va, self._cr3)

    def read_uint(self, va: int, size: int) -> int:
        """A little-endian unsigned integer of ``size`` bytes at virtual ``va``."""
        data = self.target.read_virt(va, size)
        return int.from_bytes(bytes(data[:size]), "little")

    def evaluate(self, path: Sequence[Step], cpu: int, stride: Callable[[], Optional[int]]) -> int:
        """Run a locator path for ``cpu`` and return the address it ends at."""
        address: Optional[int] = None
        for step in path:
            if step.op == "symbol":
                hit = self.symbol(step.names)
                if hit is None:
                    raise VtdbgError("profile %s: symbol %s not found%s" % (
                        self.profile.name, " or ".join(step.names),
                        " in module %s" % self.module if self.module else ""))
                address = hit[1]
                continue
            assert address is not None  # parse_profile guarantees paths start with a symbol
            if step.op == "deref":
                pointer = self.read_uint(address, step.size)
                if pointer == 0:
                    raise VtdbgError("profile %s: NULL pointer at 0x%x (hypervisor not initialised?)"
                                     % (self.profile.name, address))
                address = pointer
            elif step.op == "field":
                offset, _ = self.offset(step.type, step.names, step.offset)
                if offset is None:
                    raise VtdbgError("profile %s: offset of %s in %s unknown (needs the driver's type information)"
                                     % (self.profile.name, "/".join(step.names), step.type))
                address += offset
            elif step.op == "index":
                if cpu:
                    width = step.stride if step.stride is not None else stride()
                    if width is None:
                        raise VtdbgError("profile %s: size of %s unknown, so only CPU 0 can be located "
                                         "(needs the driver's type information)"
                                         % (self.profile.name, self.profile.per_cpu.type))
                    address += cpu * width
            elif step.op == "add":
                address += step.offset or 0
        if address is None:
            raise VtdbgError("profile %s: empty locator path" % self.profile.name)
        return address

    def evaluate_value(self, locator: Locator) -> int:
        """Follow a shared (not per-CPU) locator and read its value."""
        return self.read_uint(self.evaluate(locator.path, 0, lambda: None), locator.size)


# -- detection -----------------------------------------------------------------------------
def detect_profile(target: Target, profiles: Optional[Sequence[Profile]] = None,
                   symbols: Optional[Dict[str, Optional[int]]] = None) -> Detection:
    """The profile whose module is loaded and whose detect symbols resolve best.

    Cost: one module list, then only profiles whose module is loaded are probed, a few
    symbol look-ups each (each one debugger transaction).
    """
    chosen, warnings = (list(profiles), []) if profiles is not None else all_profiles()
    modules = loaded_modules(target)
    if modules is None:
        return Detection(None, None, [], list(warnings) + ["%s has no module list" % target.kind])
    matches: List[Tuple[int, int, Profile, Optional[str]]] = []
    cache: Dict[str, Optional[int]] = symbols if symbols is not None else {}
    for profile in chosen:
        module = next((modules[_module_key(m)][0] for m in profile.modules if _module_key(m) in modules), None)
        if profile.modules and module is None:
            continue
        resolver = _Resolver(target, profile, module, cache)
        try:
            if not all(resolver.resolves(s) for s in profile.detect_all):
                continue
            if any(resolver.resolves(s) for s in profile.detect_none):
                continue
            score = ((1 if module else 0) + len(profile.detect_all)
                     + sum(1 for s in profile.detect_any if resolver.resolves(s)))
        except CapabilityError:
            return Detection(None, None, [], list(warnings) + ["%s has no symbols" % target.kind])
        matches.append((score, profile.priority, profile, module))
    if not matches:
        return Detection(None, None, [], list(warnings))
    matches.sort(key=lambda m: (m[0], m[1]), reverse=True)
    best = matches[0]
    if len(matches) > 1 and matches[1][0] == best[0]:
        warnings = list(warnings) + ["profiles %s and %s fit equally well; using %s (give --profile to choose)"
                                     % (best[2].name, matches[1][2].name, best[2].name)]
    return Detection(best[2], best[3], [(m[2].name, m[0]) for m in matches], list(warnings))


# -- helpers -------------------------------------------------------------------------------
def virt_to_phys(target: Target, va: int, cr3: Optional[int] = None) -> Optional[int]:
    """Physical address of kernel ``va``: the backend's own translation when it has one
    (``virt_to_phys``), else a page walk through ``cr3`` (default: the current CPU's).
    None when impossible."""
    own = getattr(target, "virt_to_phys", None)
    if callable(own):
        try:
            value = own(va)
            return int(value) if value is not None else None
        except VtdbgError:
            return None
    if not target.has(Capability.PHYS_READ) or (cr3 is None and not target.has(Capability.REGS)):
        return None
    from vtdbg.target.paging import translate

    try:
        if cr3 is None:
            cr3 = target.registers()["cr3"]
        pa, _ = translate(target.read_phys, cr3, va)
    except (VtdbgError, KeyError):
        return None
    return pa


def _cpu_registers(target: Target, cpu: int) -> Optional[Dict[str, int]]:
    if not target.has(Capability.REGS):
        return None
    try:
        with target.select_cpu(cpu):
            return target.registers()
    except VtdbgError:
        return None


def _vmcs_pointers(target: Target, vmcs_pa: int) -> Tuple[Optional[int], Optional[int], str]:
    """(MSR bitmap PA, EPTP) from the VMCS in memory, each only when its control is on."""
    from vtdbg.core.vmcs import read_vmcs

    try:
        vmcs = read_vmcs(target, vmcs_pa)
    except VtdbgError as exc:
        return None, None, "VMCS at 0x%x not decoded: %s" % (vmcs_pa, exc)
    primary = vmcs.get("CPU_BASED_VM_EXEC_CONTROL") or 0
    secondary = vmcs.get("SECONDARY_VM_EXEC_CONTROL") or 0
    bitmap = vmcs.get("MSR_BITMAP") if primary & _USE_MSR_BITMAPS else None
    eptp = vmcs.get("EPT_POINTER") if primary & _ACTIVATE_SECONDARY and secondary & _ENABLE_EPT else None
    return bitmap, eptp, "VMCS memory (layout %s; may be stale while the VMCS is active)" % vmcs.layout


def _fill_from_vmcs(target: Target, regions: CpuRegions) -> None:
    if regions.vmcs_pa is None or (regions.msr_bitmap_pa is not None and regions.eptp is not None):
        return
    if not target.has(Capability.PHYS_READ):
        return
    bitmap, eptp, source = _vmcs_pointers(target, regions.vmcs_pa)
    if regions.msr_bitmap_pa is None and bitmap is not None:
        regions.msr_bitmap_pa, regions.sources["msr_bitmap_pa"] = bitmap, source
    if regions.eptp is None and eptp is not None:
        regions.eptp, regions.sources["eptp"] = eptp, source


# -- the per-CPU walk ------------------------------------------------------------------------
def _handler_ranges(resolver: _Resolver) -> List[CodeRange]:
    """Root-only code ranges: stubs with a size in the profile, and the first byte of every
    entry point (a breakpoint on the handler stops exactly there)."""
    profile = resolver.profile
    ranges: List[CodeRange] = []
    seen = set()
    for name, size in profile.handler_sizes.items():
        hit = resolver.symbol([name])
        if hit is not None:
            ranges.append(("%s (+0x%x, approximate)" % (name, size), hit[1], hit[1] + size))
            seen.add(name)
    for name in profile.exit_entry + profile.exit_handler:
        if name in seen:
            continue
        hit = resolver.symbol([name])
        if hit is not None:
            ranges.append((name, hit[1], hit[1] + 1))
    return ranges


def _field_plan(resolver: _Resolver) -> Dict[str, Tuple[FieldSpec, Optional[int], str]]:
    per_cpu = resolver.profile.per_cpu
    plan = {}
    for role, spec in per_cpu.fields.items():
        offset, source = resolver.offset(per_cpu.type, spec.names, spec.offset)
        plan[role] = (spec, offset, source)
    return plan


def _one_cpu(resolver: _Resolver, cpu: int, plan: Dict[str, Tuple[FieldSpec, Optional[int], str]],
             shared: Dict[str, Tuple[Optional[int], str]], ranges: List[CodeRange]) -> CpuRegions:
    target, profile = resolver.target, resolver.profile
    per_cpu = profile.per_cpu
    out = CpuRegions(cpu=cpu, profile=profile.name, vmm_stack_size=profile.vmm_stack_size)
    base = resolver.evaluate(per_cpu.path, cpu, lambda: resolver.type_size(per_cpu.type, per_cpu.element_size))
    out.per_cpu_address = base
    readable = [(off + spec.size) for spec, off, _ in plan.values() if off is not None and spec.kind != "embedded"]
    span = max(readable) if readable else 0
    if span > _MAX_SPAN:
        raise VtdbgError("profile %s: field offsets reach 0x%x bytes into the per-CPU structure; refusing to read"
                         % (profile.name, span))
    raw = bytes(target.read_virt(base, span)) if span else b""
    values: Dict[str, int] = {}
    for role, (spec, offset, source) in plan.items():
        if offset is None:
            if role in _MAIN_ROLES:
                out.warnings.append("%s: offset of %s unknown without type information" % (role, "/".join(spec.names)))
            continue
        if spec.kind == "embedded":
            values[role] = base + offset
        else:
            values[role] = int.from_bytes(raw[offset:offset + spec.size], "little")
        out.sources[_MAIN_ROLES.get(role, role)] = "%s.%s (%s)" % (per_cpu.type or "per-CPU", spec.names[0], source)
        if role not in _MAIN_ROLES:
            out.fields[role] = values[role]

    def physical(role: str) -> Optional[int]:
        if role not in values:
            return None
        spec = plan[role][0]
        value = values[role]
        if value == 0 and spec.kind != "embedded":
            out.warnings.append("%s is 0 (not allocated on this CPU?)" % role)
            return None
        if spec.kind == "physical":
            return value
        pa = resolver.to_phys(value)
        if pa is None:
            out.warnings.append("%s: cannot translate virtual 0x%x to physical" % (role, value))
        return pa

    out.vmxon_pa = physical("vmxon")
    out.vmcs_pa = physical("vmcs")
    if "msr_bitmap" in values:
        out.msr_bitmap_pa = physical("msr_bitmap")
    elif "msr_bitmap" in shared:
        value, source = shared["msr_bitmap"]
        out.msr_bitmap_pa = value
        out.sources["msr_bitmap_pa"] = source
    if "vmm_stack" in values:
        spec = plan["vmm_stack"][0]
        out.vmm_stack = values["vmm_stack"] if values["vmm_stack"] or spec.kind == "embedded" else None
    if "eptp" in values:
        out.eptp = values["eptp"] or None
    elif "eptp" in shared:
        out.eptp, out.sources["eptp"] = shared["eptp"]
    _fill_from_vmcs(target, out)
    out.root_mode_evidence, out.root_mode = _root_mode(resolver, cpu, values.get("root_mode_flag"),
                                                       "root_mode_flag" in per_cpu.fields, out, ranges)
    return out


def _root_mode(resolver: _Resolver, cpu: int, flag: Optional[int], has_flag: bool, regions: CpuRegions,
               ranges: List[CodeRange]) -> Tuple[List[Evidence], Optional[bool]]:
    profile = resolver.profile
    regs = _cpu_registers(resolver.target, cpu)
    rip = regs.get("rip") if regs else None
    rsp = regs.get("rsp") if regs else None
    stack = None
    if regions.vmm_stack is not None and profile.vmm_stack_size:
        stack = (regions.vmm_stack, profile.vmm_stack_size)
    rip_symbol = symbol_at(resolver.target, rip) if rip is not None else None
    flag_spec = profile.per_cpu.fields.get("root_mode_flag")
    verdict: RootModeVerdict = judge(flag, rip, rsp, ranges, stack, rip_symbol,
                                     profile.root_only + profile.exit_entry + profile.exit_handler,
                                     has_flag=has_flag, flag_name=flag_spec.names[0] if flag_spec else "root-mode flag")
    if regs is None:
        verdict.evidence[-1].detail += " (no registers for CPU %d on a %s target)" % (cpu, resolver.target.kind)
    return verdict.evidence, verdict.root_mode


def _shared_values(resolver: _Resolver, warnings: List[str]) -> Dict[str, Tuple[Optional[int], str]]:
    """Profile globals (e.g. one EPT for all CPUs), each evaluated once."""
    out: Dict[str, Tuple[Optional[int], str]] = {}
    for role, locator in resolver.profile.globals.items():
        try:
            value = resolver.evaluate_value(locator)
        except VtdbgError as exc:
            warnings.append("%s: %s" % (role, exc))
            continue
        source = "global %s (%s)" % (locator.path[0].names[0], locator.note or locator.kind)
        if locator.kind == "virtual":
            pa = resolver.to_phys(value) if value else None
            if pa is None:
                warnings.append("%s: cannot translate virtual 0x%x to physical" % (role, value))
            out[role] = (pa, source)
        else:
            out[role] = (value or None, source)
    return out


def _count(resolver: _Resolver, warnings: List[str]) -> int:
    per_cpu = resolver.profile.per_cpu
    if per_cpu.count is not None:
        try:
            count = resolver.evaluate_value(per_cpu.count)
            if 0 < count <= _MAX_CPUS:
                return count
            warnings.append("per-CPU count read as %d; using the target's CPU count" % count)
        except VtdbgError as exc:
            warnings.append("per-CPU count not read (%s); using the target's CPU count" % exc)
    return max(1, resolver.target.cpu_count())


def _select(cpu: Optional[int], count: int) -> List[int]:
    if cpu is None:
        return list(range(count))
    if not 0 <= cpu < count:
        raise UsageError("CPU %d does not exist here (%d found)" % (cpu, count))
    return [cpu]


# -- the scan fallback -------------------------------------------------------------------------
def scan_regions(target: Target, cpu: Optional[int] = None, reason: str = "") -> List[CpuRegions]:
    """Regions from a physical scan for VMCS pages (no symbols): CPU n = the nth VMCS."""
    from vtdbg.core.locate import find_vmcs

    if not target.phys_ranges():
        raise VtdbgError("%s: no profile applies%s and the target offers no physical ranges to scan"
                         % (target.description, " (%s)" % reason if reason else ""))
    found = find_vmcs(target)
    if not found:
        raise VtdbgError("no VMCS found in %s%s" % (target.description, " (%s)" % reason if reason else ""))
    out = []
    for index in _select(cpu, len(found)):
        item = found[index]
        regions = CpuRegions(cpu=index, profile=None, vmcs_pa=item.pa)
        regions.sources["vmcs_pa"] = "physical scan (layout %s, confidence %.2f)" % (item.layout, item.confidence)
        if reason:
            regions.warnings.append(reason)
        _fill_from_vmcs(target, regions)
        regions.root_mode_evidence = [Evidence("profile", None, "no target profile: root mode not judged")]
        out.append(regions)
    return out


# -- entry point -------------------------------------------------------------------------------
def find_regions(target: Target, cpu: Optional[int] = None, profile: Union[str, Profile, None] = None,
                 warnings: Optional[List[str]] = None) -> List[CpuRegions]:
    """Per-CPU regions of ``target`` (every CPU when ``cpu`` is None).

    ``profile``: a name or Profile to force, else it is detected from loaded modules and
    symbols.  Without symbols, or when no profile fits, the regions come from a physical
    VMCS scan.  Messages for the whole call are appended to ``warnings``; a CPU that fails
    is returned with ``error`` set rather than raising, so one bad CPU does not hide the
    others.
    """
    notes: List[str] = warnings if warnings is not None else []
    module: Optional[str] = None
    if isinstance(profile, str):
        try:
            chosen: Optional[Profile] = get_profile(profile)
        except ProfileError as exc:
            raise UsageError(str(exc)) from None
    else:
        chosen = profile
    symbols_ok = target.has(Capability.SYMBOLS)
    cache: Dict[str, Optional[int]] = {}
    if chosen is None:
        if not symbols_ok:
            return scan_regions(target, cpu, "")
        detection = detect_profile(target, symbols=cache)
        notes.extend(detection.warnings)
        if detection.profile is None:
            return scan_regions(target, cpu, "no known hypervisor profile matches the loaded modules")
        chosen, module = detection.profile, detection.module
    elif symbols_ok:
        mods = loaded_modules(target) or {}
        module = next((mods[_module_key(m)][0] for m in chosen.modules if _module_key(m) in mods), None)
        if module is None and chosen.modules:
            module = chosen.modules[0]
            notes.append("module %s not in the module list; symbols are qualified with it anyway" % module)
    else:
        raise UsageError("profile %s needs symbols, which a %s target does not have" % (chosen.name, target.kind))
    if not chosen.per_cpu.locatable:
        reason = "profile %s: per-CPU data is not reachable from a symbol (%s)" % (chosen.name, chosen.per_cpu.how)
        notes.append(reason)
        if target.phys_ranges():
            return scan_regions(target, cpu, reason)
        raise VtdbgError(reason)
    resolver = _Resolver(target, chosen, module, cache)
    count = _count(resolver, notes)
    cpus = _select(cpu, count)
    plan = _field_plan(resolver)
    shared = _shared_values(resolver, notes)
    ranges = _handler_ranges(resolver)
    out = []
    for index in cpus:
        try:
            out.append(_one_cpu(resolver, index, plan, shared, ranges))
        except VtdbgError as exc:
            out.append(CpuRegions(cpu=index, profile=chosen.name, error=str(exc)))
    notes.extend(resolver.warnings)
    return out

