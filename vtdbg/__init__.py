"""vtdbg: a debugger extension for Intel VT-x state (VMXON/VMCS regions, exits, EPT)."""

__version__ = "0.1.0"
