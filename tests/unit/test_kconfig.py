"""Config fragments merged as merge_config.sh merges them, and checked after olddefconfig."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from framework.build.kconfig import lost, merge, parse
from framework.errors import ConfigError

BASE = """#
# Automatically generated file; DO NOT EDIT.
#
CONFIG_64BIT=y
# CONFIG_XEN is not set
CONFIG_HZ=250
CONFIG_LOCALVERSION=""
"""

XEN = """# Xen PV dom0
CONFIG_HYPERVISOR_GUEST=y
CONFIG_PARAVIRT=y
CONFIG_XEN=y
CONFIG_XEN_PV=y
CONFIG_XEN_DOM0=y
"""


def test_parse_reads_values_unset_options_and_lines() -> None:
    got = parse(BASE, "base")
    assert [(s.name, s.value, s.line) for s in got] == [
        ("CONFIG_64BIT", "y", 4), ("CONFIG_XEN", None, 5), ("CONFIG_HZ", "250", 6), ("CONFIG_LOCALVERSION", '""', 7)]
    assert got[1].render() == "# CONFIG_XEN is not set"


def test_a_line_that_is_not_kconfig_is_refused_at_its_line() -> None:
    with pytest.raises(ConfigError) as err:
        parse("CONFIG_A=y\n\nXEN=y\n", "kernels/fragments/bad.config")
    assert str(err.value).startswith("kernels/fragments/bad.config:3: 'XEN=y' is not a Kconfig line")


def test_fragments_lay_over_the_base_in_order_and_conflicts_are_noted() -> None:
    merged = merge(BASE, [("xen.config", XEN), ("hz.config", "CONFIG_HZ=1000\n# CONFIG_XEN_DOM0 is not set\n")])
    final = {s.name: s.value for s in parse(merged.text, "m")}
    assert final["CONFIG_XEN"] == "y" and final["CONFIG_HZ"] == "1000" and final["CONFIG_64BIT"] == "y"
    assert final["CONFIG_XEN_DOM0"] is None
    assert merged.requested["CONFIG_XEN_DOM0"].where() == "hz.config:2"
    # Replacing the base is what a fragment is for; replacing another fragment is noted.
    assert merged.notes() == [("hz.config:2: CONFIG_XEN_DOM0 redefined from 'CONFIG_XEN_DOM0=y' (xen.config:6) "
                               "to '# CONFIG_XEN_DOM0 is not set'")]


def test_an_option_that_did_not_survive_olddefconfig_names_its_fragment_line() -> None:
    merged = merge(BASE, [("kernels/fragments/xen-dom0.config", XEN)])
    # olddefconfig without CONFIG_X86_64's dependencies: XEN_PV dropped, XEN_DOM0 absent.
    final = BASE.replace("# CONFIG_XEN is not set", "CONFIG_XEN=y") + "CONFIG_HYPERVISOR_GUEST=y\nCONFIG_PARAVIRT=y\n" \
        "# CONFIG_XEN_PV is not set\n"
    missing = lost(merged.requested.values(), final)
    assert [m.wanted.name for m in missing] == ["CONFIG_XEN_PV", "CONFIG_XEN_DOM0"]
    assert missing[0].message() == (
        "kernels/fragments/xen-dom0.config:5: CONFIG_XEN_PV=y did not survive olddefconfig: the final .config has "
        "CONFIG_XEN_PV absent (its dependencies are not met); add what it depends on to the fragment, or drop the line")
    assert lost(merged.requested.values(), final + "CONFIG_XEN_PV=y\nCONFIG_XEN_DOM0=y\n") == []


def test_is_not_set_is_met_by_an_absent_option_and_broken_by_a_set_one() -> None:
    merged = merge("", [("f", "# CONFIG_RETPOLINE is not set\nCONFIG_NR_CPUS=4\n")])
    assert lost(merged.requested.values(), "CONFIG_NR_CPUS=4\n") == []
    broken = lost(merged.requested.values(), "CONFIG_RETPOLINE=y\nCONFIG_NR_CPUS=64\n")
    assert [(m.wanted.name, m.actual) for m in broken] == [("CONFIG_RETPOLINE", "y"), ("CONFIG_NR_CPUS", "64")]


NAMES = st.sampled_from([f"CONFIG_{n}" for n in ("A", "B", "C", "XEN", "HZ")])
VALUES = st.one_of(st.none(), st.sampled_from(["y", "m", "4", '"x"']))


@given(st.lists(st.lists(st.tuples(NAMES, VALUES), max_size=6), max_size=4))
def test_the_last_fragment_to_set_an_option_wins_and_its_request_is_met_by_the_merge(
        fragments: list[list[tuple[str, str | None]]]) -> None:
    texts = [(f"f{i}", "".join(f"# {n} is not set\n" if v is None else f"{n}={v}\n" for n, v in frag))
             for i, frag in enumerate(fragments)]
    merged = merge(BASE, texts)
    last: dict[str, str | None] = {}
    for frag in fragments:
        for name, value in frag:
            last[name] = value
    assert {n: s.value for n, s in merged.requested.items()} == last
    # The merged text itself meets every request: nothing is lost before olddefconfig.
    assert lost(merged.requested.values(), merged.text) == []



def test_an_option_the_tree_does_not_define_is_named_as_unknown() -> None:
    fragment = "CONFIG_RETPOLINE=y\nCONFIG_MITIGATION_RETPOLINE=y\n"
    merged = merge(BASE, [("frag.config", fragment)])
    final = BASE + "CONFIG_RETPOLINE=y\n"
    found = lost(merged.requested.values(), final, known={"RETPOLINE", "64BIT"})
    assert [(x.wanted.name, x.unknown) for x in found] == [("CONFIG_MITIGATION_RETPOLINE", True)]
    assert found[0].message().startswith("frag.config:2: CONFIG_MITIGATION_RETPOLINE=y: this tree has no option "
                                         "MITIGATION_RETPOLINE")
    # without the tree's symbols the same loss reads as unmet dependencies
    assert "did not survive olddefconfig" in lost(merged.requested.values(), final)[0].message()
