"""Kernels built from a tree (issue 11, in progress): so far the pure .config merge and check (kconfig.py).

Nothing here is wired to the command line yet: ``patchscope build`` does not exist.
"""
