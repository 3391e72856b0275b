"""The patch-event trace from the TCG plugin (``--tracer plugin``): its QEMU arguments, and its log made a trace.

The guest is not stopped for any write: the plugin logs them as they happen,
and the session stops the guest once, at the success marker, for the booted
capture that the replayed trace is checked against.
"""

from __future__ import annotations

import mmap
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..analysis import textwrites
from ..analysis.sites import Capture
from ..analysis.trace import Event, Explainer, Model
from ..domain import Note
from ..elf.vmlinux import Site, Symbols
from ..errors import InfrastructureError
from ..vm import plugin
from ..vm.machine import Machine

LOG = "textwrites.bin"


class PluginTracer:
    """One run's plugin trace: built (and its plugin compiled) before QEMU starts."""

    def __init__(self, symbols: Symbols, sites: Mapping[str, Sequence[Site]], regions: Mapping[int, bytes],
                 init: tuple[int, int] | None, outdir: Path, note: Note) -> None:
        self.symbols = symbols
        self.sites = sites
        self.regions = regions          # the vmlinux's bytes of each compared text region
        self.text = plugin.text_args([(start, start + len(data)) for start, data in regions.items()])
        self.watched = textwrites.watches(symbols, self.text)
        self.init = init
        self.log = outdir / LOG
        self.note = note
        self.so = plugin.build_plugin(note)
        self.ram: plugin.GuestRam | None = None
        self.stats: textwrites.Stats | None = None

    def qemu_args(self, m: Machine) -> list[str]:
        """The guest's RAM as a shared memory file, and the plugin, for QEMU's command line."""
        size = m.memory_mib << 20
        self.ram = plugin.GuestRam(size)
        free_at = self.symbols.address(textwrites.FREE_INIT)
        thunk = self.symbols.address("__x86_return_thunk")
        setup = plugin.PluginSetup(
            self.log, self.ram.path, size, self.text, tuple(w.arg() for w in self.watched),
            (self.text[0][0], self.text[-1][1]),
            (free_at, self.init) if free_at is not None and self.init is not None else None, thunk)
        return plugin.plugin_args(self.so, setup)

    def close(self) -> None:
        if self.ram is not None:
            self.ram.close()

    def finish(self, booted: Capture | None, started: float, t: float) -> tuple[list[Event], Model]:
        """The trace so far (the guest stopped at its marker), replayed over the vmlinux and checked against
        the booted capture; ``started``: when QEMU started (time.monotonic()), ``t``: seconds since."""
        explainer = Explainer(self.sites, self.symbols)
        explainer.strict = True
        model = Model(self.regions, explainer, self.symbols)
        model.check.every_write = True
        try:
            with open(self.log, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                events, self.stats = textwrites.convert(textwrites.records(data), self.watched, self.text,
                                                        model, self.symbols, started)
        except (OSError, ValueError) as err:
            raise InfrastructureError(f"{self.log}: the text-write plugin's log cannot be read ({err}); "
                                      "run again, or trace with --tracer breakpoints") from None
        stats = self.stats
        if not stats.armed:
            self.note("trace: the kernel never ran at its link-time addresses; nothing was traced")
        self.note(f"trace: {stats.stores} stores into text logged by the plugin ({stats.aliased} through another "
                  f"mapping); {textwrites.placement_note(stats)}")
        if stats.dropped or stats.no_value:
            self.note(f"trace: {stats.dropped} records dropped, {stats.no_value} stores without a value: "
                      "the trace is incomplete")
        if booted is not None:
            live = {start: data for start, data in booted.regions.items()
                    if not any(booted.is_freed(a) for a in (start, start + len(data) - 1))}
            events += model.snapshot("booted", live, "live", t)
        if model.check.result().passed and not stats.dropped and not stats.no_value:
            self.log.unlink(missing_ok=True)     # every write is in trace.jsonl.gz; a failed check keeps the log
        else:
            self.note(f"trace: the plugin's raw log is kept in {self.log}")
        return events, model
