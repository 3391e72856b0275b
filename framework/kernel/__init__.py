"""Kernels and hypervisors: references (refs), the apt cache (fetch), images and their symbols (image), Xen (xen).

The first stage of a run: what to boot, fetched or built once and cached.
"""
