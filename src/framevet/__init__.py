"""framevet: verify the stack-frame and register discipline of x86-64 machine code."""

__version__ = "0.1.0"
