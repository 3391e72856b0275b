"""Watching a run: the console monitor (console), the debugger session and its captures (session, capture),
the run's inspection step (inspection) and the interactive GDB of ``boot --gdb`` (debug). The edges.
"""
