"""Kernels built from a tree: ``patchscope build``, and ``--kernel build:<recipe>`` / recipe names.

Pure: recipe (recipes and cache keys), kconfig (fragments merged as merge_config.sh
does, and checked after olddefconfig), buildlog (progress steps, the first error).
Edges: tree (Debian source packages, local trees and their identities), kbuild
(configure, make out of tree with ccache, the cache entry), commands (the CLI).
"""
