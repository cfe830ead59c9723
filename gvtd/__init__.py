"""gvtd: persistent Intel GVT-g virtual GPUs, managed from one host daemon."""

__version__ = "0.1.0"
