"""expect.<mode>: one config, expectations that differ by mode, checked as they will be judged."""

from __future__ import annotations

import re

import pytest
import yaml

from framework.analysis.console_log import Ending
from framework.analysis.observation import observe
from framework.config import Config, default_config, parse_config, to_yaml_dict, with_overrides
from framework.errors import ConfigError
from framework.verdict import judge

BOOT = """\
name: boot
init_commands: [true]
expect:
  allow_crashes: ["WARNING in foo"]
  console:
    contains: ["patchscope: exit 1: 0"]
  native:
    console: {contains: ["on bare hardware"]}
  xen-pv:
    allow_crashes: ["WARNING in bar"]
    console: {contains: ["Booting kernel on Xen"], excludes: ["bare hardware"]}
"""


def patterns(items: tuple[re.Pattern[str], ...]) -> list[str]:
    return [p.pattern for p in items]


def test_a_mode_section_adds_to_lists_and_replaces_values() -> None:
    cfg = parse_config(BOOT)
    xen = cfg.expect_for("xen-pv")
    assert patterns(xen.console.contains) == ["patchscope: exit 1: 0", "Booting kernel on Xen"]
    assert patterns(xen.console.excludes) == ["bare hardware"]
    assert patterns(xen.allow_crashes) == ["WARNING in foo", "WARNING in bar"]
    assert patterns(cfg.expect_for("native").console.contains) == ["patchscope: exit 1: 0", "on bare hardware"]
    assert cfg.expect_for(None) == cfg.expect
    panics = parse_config("name: p\ninitramfs: none\nexpect:\n  outcome: hangs\n"
                          "  native: {outcome: panics, crash: '^kernel panic'}\n")
    assert panics.expect_for("native").outcome == "panics" and panics.expect_for("xen-pv").outcome == "hangs"
    assert panics.expect_for("native").crash is not None and panics.expect_for("xen-pv").crash is None


@pytest.mark.parametrize("text", [BOOT, "name: x\nexpect:\n  xen-pv: {outcome: hangs}\n"])
def test_mode_sections_round_trip(text: str) -> None:
    cfg = parse_config(text)
    assert parse_config(yaml.safe_dump(to_yaml_dict(cfg))) == cfg
    assert with_overrides(cfg, modes=("xen-pv",)).expect_modes == cfg.expect_modes
    assert default_config("x", expect=to_yaml_dict(cfg)["expect"]).expect_modes == cfg.expect_modes


BAD = {
    "expect:\n  xen-pv:\n    crash: foo\n":
        "<config>:3: expect.crash only applies to outcome 'panics' (outcome is 'boots' in xen-pv mode "
        "(expect.xen-pv over expect)); set expect.xen-pv.outcome: panics or remove the crash",
    "expect:\n  native:\n    outcom: boots\n": "<config>:3: unknown key 'outcom' in expect.native (did you mean 'outcome'?)",
    "expect:\n  xen-pv:\n    sites: [{table: paravirt, count: 1}]\n":
        "<config>:3: expect.xen-pv.sites needs an inspect: section saying what to capture, "
        "e.g. inspect: {capture: after-patching}",
    "initramfs: none\nexpect:\n  outcome: panics\n  native: {outcome: boots}\n":
        "<config>:4: initramfs: none cannot go with outcome 'boots' in native mode (expect.native over expect): "
        "without patchscope's /init nothing prints the success marker",
    "expect:\n  native:\n    native: {}\n": "<config>:3: unknown key 'native' in expect.native",
    "expect:\n  xen-pv:\n    nmi: delivered\n":
        "<config>:3: expect.xen-pv.nmi needs a scenario rule that injects an NMI (do: [inject-nmi]); add one or "
        "remove expect.xen-pv.nmi",
}


@pytest.mark.parametrize("text", BAD, ids=range(len(BAD)))
def test_a_mode_section_is_refused_with_its_line(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert str(err.value).startswith(BAD[text])


def test_the_judge_holds_each_mode_to_its_section() -> None:
    lines = [(1.0, "Booting paravirtualized kernel on bare hardware"), (2.0, "patchscope: exit 1: 0"),
             (3.0, "patchscope: init done")]
    obs = observe(lines, Ending("exit", 4.0, 0))
    cfg: Config = parse_config(BOOT)
    assert judge(cfg, obs, None, "native").passed
    assert judge(cfg, obs, None, "xen-pv").reasons == (
        "no console line matches /Booting kernel on Xen/",
        "console line 1 matches excluded /bare hardware/: Booting paravirtualized kernel on bare hardware")
