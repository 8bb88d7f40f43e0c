"""SDM facts as data: VMCS fields, exit reasons, VM-instruction errors, controls, decoders."""
from vtdbg.arch.errors import UnknownNameError

__all__ = ["UnknownNameError"]
