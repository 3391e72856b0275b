"""The kernel's ELF, pure: sections and patch-site tables (vmlinux), BTF types (btf), CPU feature names (cpufeatures).
"""
