"""The virtual machine: QEMU's command line per mode (machine, pure), the QEMU process and its teardown (qemu), QMP (qmp).
"""
