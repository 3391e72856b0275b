"""patchscope: boot real x86-64 kernels in QEMU and judge their runtime text patching."""

__version__ = "0.1.0"
