"""How a log ends, said as what it is (issue 15): a machine that starts again after Linux ran is a reset, and a
log that simply stops says where it stopped."""

from __future__ import annotations

import pytest

from framework.analysis.console_log import Ending
from framework.analysis.observation import observe

BOOT = ["[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)",
        "[    0.100000] Booting paravirtualized kernel on bare hardware",
        "[    0.500000] Freeing SMP alternatives memory: 40K"]


@pytest.mark.parametrize("again", ["SeaBIOS (version 1.16.2-debian-1.16.2-1)", "Booting from ROM...",
                                   "Decompressing Linux... Parsing ELF... done.",
                                   "[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)"])
def test_a_machine_that_starts_again_is_a_reset_after_the_last_stage_before_it(again: str) -> None:
    log = [*BOOT, again, *BOOT, "[    2.0] reboot: Power down"]
    obs = observe([(None, ln) for ln in log], Ending("log-end", 0.0))
    assert obs.outcome == "panics"
    assert obs.title == "reset or triple fault after 'Freeing SMP alternatives'"
    assert obs.crashes[0].line == len(BOOT) + 1 and obs.last_stage == "Freeing SMP alternatives"


def test_the_first_banner_and_the_bios_before_it_are_no_reset() -> None:
    log = ["SeaBIOS (version 1.16.2)", "Booting from ROM...", *BOOT, "[    2.0] reboot: Power down"]
    obs = observe([(None, ln) for ln in log], Ending("log-end", 0.0))
    assert obs.outcome == "boots" and obs.crashes == ()


def test_a_panic_before_the_restart_stays_the_title() -> None:
    log = [*BOOT, "[    1.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009",
           "SeaBIOS (version 1.16.2)", *BOOT]
    obs = observe([(None, ln) for ln in log], Ending("log-end", 0.0))
    assert obs.outcome == "panics" and obs.title is not None and obs.title.startswith("kernel panic")
    assert not any(c.kind == "reset" for c in obs.crashes)


def test_a_log_that_simply_ends_says_where() -> None:
    obs = observe([(None, ln) for ln in BOOT], Ending("log-end", 0.0))
    assert obs.outcome == "unknown"
    assert obs.summary == ("the log ends after 'Freeing SMP alternatives' with no power-off, panic or hang in it "
                           "(cut short?)")
