"""What a matrix of kernels needs from a config and a kernel: requires:, upstream versions, debian-newest: refs.

No apt: ``parse_policy`` and ``newest`` are fed captured ``apt-cache policy`` output.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from framework.config import Requires, parse_config, to_yaml_dict
from framework.debversion import compare_debian_versions
from framework.domain import TABLES
from framework.elf.vmlinux import upstream_version
from framework.errors import ConfigError, ImageError, KernelRefError
from framework.kernel.fetch import newest, parse_policy
from framework.kernel.refs import NewestRef, parse_ref
from framework.matrix.runner import check_kernel

REPO_KERNELS = Path(__file__).resolve().parents[2] / "kernels"
CONFIG = Path("/configs/needs.yaml")

# --------------------------------------------------------------------------- requires:

GOOD = """\
name: needs-returns
requires:
  kernel: ">= 6.1, < 6.12"
  symbols: [apply_returns]
  tables: [returns]
"""


def requires(text: str) -> Requires:
    return parse_config(text, CONFIG).requires


def test_requires_is_parsed() -> None:
    req = requires(GOOD)
    assert req == Requires(kernel=((">=", (6, 1)), ("<", (6, 12))), symbols=("apply_returns",), tables=("returns",))
    assert req and not Requires()
    assert req.describe_kernel() == ">= 6.1, < 6.12"
    assert parse_config("name: x\n", CONFIG).requires == Requires()


@pytest.mark.parametrize("text, expected", [
    ('kernel: "==6.1.192"', (("==", (6, 1, 192)),)),
    ('kernel: " != 6 "', (("!=", (6,)),)),
    ('kernel: "> 5.15,<=6.6, != 6.2"', ((">", (5, 15)), ("<=", (6, 6)), ("!=", (6, 2)))),
])
def test_kernel_bounds_in_every_form(text: str, expected: tuple[tuple[str, tuple[int, ...]], ...]) -> None:
    assert requires(f"requires:\n  {text}\n").kernel == expected


@pytest.mark.parametrize("body, line, fragments", [
    ('  kernel: "6.1"\n', 3, ("requires.kernel", "'6.1' is not a bound", "'>= 6.1, < 6.12'")),
    ('  kernel: ">= six"\n', 3, ("'>= six' is not a bound",)),
    ('  kernel: "=> 6.1"\n', 3, ("'=> 6.1' is not a bound", ">=, <=, ==, !=, >, <")),
    ('  kernel: ">= 6.1,"\n', 3, ("is not a bound",)),
    ('  kernel: ">= 6.1.2.3"\n', 3, ("is not a bound",)),
    ('  kernel: ""\n', 3, ("is not a bound",)),
    ('  kernel: [">= 6.1"]\n', 3, ("requires.kernel must be a version range", "not a list")),
    ("  tables:\n    - returns\n    - retuns\n", 5, ("requires.tables[1]", "'retuns' is not a patch-site table",
                                                   "did you mean 'returns'")),
    ("  symbols:\n    - apply_returns\n    - apply-returns\n", 5,
     ("requires.symbols[1]", "'apply-returns' is not a kernel symbol name")),
    ("  symbols: [1st_symbol]\n", 3, ("'1st_symbol' is not a kernel symbol name",)),
    ('  kernels: ">= 6.1"\n', 3, ("unknown key 'kernels' in requires", "did you mean 'kernel'")),
])
def test_bad_requires_name_file_and_line(body: str, line: int, fragments: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("name: needs\nrequires:\n" + body, CONFIG)
    assert (info.value.path, info.value.line) == (CONFIG, line)
    assert str(info.value).startswith(f"{CONFIG}:{line}: ")
    for fragment in fragments:
        assert fragment in info.value.reason


def never(_: str) -> bool:
    return False


def always(_: str) -> bool:
    return True


@pytest.mark.parametrize("bound, version, ok", [
    (">= 6.1, < 6.12", (6, 1, 192), True),
    (">= 6.1, < 6.12", (6, 11, 9), True),
    (">= 6.1, < 6.12", (6, 12, 5), False),          # 6.12.5 is not < 6.12 at the bound's precision
    (">= 6.1, < 6.12", (6, 0, 99), False),
    (">= 6.1, < 6.12", (5, 19), False),
    ("== 6.1", (6, 1, 192), True),                  # 6.1.192 is 6.1
    ("== 6.1", (6, 10, 1), False),
    ("== 6.1", (6, 1), True),
    ("== 6.1.192", (6, 1), False),                  # a shorter version is padded with zeros: 6.1.0
    ("== 6.1.0", (6, 1), True),
    ("!= 6.1", (6, 1, 192), False),
    ("!= 6.1", (6, 2, 0), True),
    ("> 6.1", (6, 1, 192), False),                  # the 6.1 line is not above 6.1
    ("> 6.1", (6, 2), True),
    ("<= 6.1", (6, 1, 192), True),
    ("< 6.1.100", (6, 1, 99), True),
    ("< 6.1.100", (6, 1, 100), False),
    (">= 6", (6, 0, 1), True),
    (">= 7", (6, 99, 1), False),
])
def test_why_not_compares_at_the_bounds_precision(bound: str, version: tuple[int, ...], ok: bool) -> None:
    req = requires(f'requires:\n  kernel: "{bound}"\n')
    why = req.why_not(version, never, never)
    if ok:
        assert why is None
    else:
        assert why == f"requires.kernel {req.describe_kernel()}: the kernel is {'.'.join(map(str, version))}"


def test_why_not_names_missing_symbols_and_tables_after_the_version() -> None:
    req = Requires(kernel=((">=", (6, 1)),), symbols=("apply_returns", "x86_return_thunk", "text_poke_bp"),
                   tables=("returns", "retpolines"))
    have = {"text_poke_bp", "retpolines"}.__contains__
    assert req.why_not((6, 1, 192), always, always) is None
    assert req.why_not((6, 1, 192), have, always) == \
        "requires.symbols: the kernel has no apply_returns, x86_return_thunk"
    assert req.why_not((6, 1, 192), always, have) == "requires.tables: the vmlinux has no returns table"
    assert req.why_not((5, 10, 1), never, never).startswith("requires.kernel")      # type: ignore[union-attr]
    assert Requires().why_not((1,), never, never) is None


def test_requires_survives_to_yaml_dict() -> None:
    cfg = parse_config(GOOD, CONFIG)
    data = to_yaml_dict(cfg)
    assert data["requires"] == {"kernel": ">= 6.1, < 6.12", "symbols": ["apply_returns"], "tables": ["returns"]}
    again = parse_config(yaml.safe_dump(data), CONFIG)
    assert again.requires == cfg.requires
    assert again == cfg
    assert "requires" not in to_yaml_dict(parse_config("name: x\n", CONFIG))


@settings(max_examples=150, deadline=None)
@given(bounds=st.lists(st.tuples(st.sampled_from([">=", "<=", "==", "!=", ">", "<"]),
                                 st.lists(st.integers(0, 300), min_size=1, max_size=3)), min_size=1, max_size=4),
       symbols=st.lists(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True), max_size=3, unique=True),
       tables=st.lists(st.sampled_from(TABLES), max_size=3, unique=True))
def test_any_requires_round_trips(bounds: list[tuple[str, list[int]]], symbols: list[str], tables: list[str]) -> None:
    req = Requires(kernel=tuple((op, tuple(v)) for op, v in bounds), symbols=tuple(symbols), tables=tuple(tables))
    cfg = dataclasses.replace(parse_config("name: x\n", CONFIG), requires=req)
    assert parse_config(yaml.safe_dump(to_yaml_dict(cfg)), CONFIG).requires == req


# --------------------------------------------------------------------------- upstream_version

BOOKWORM = ("6.1.0-56-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0, "
            "GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-11-16)")

BOOKWORM_612 = ("6.12.38+deb12-amd64 (debian-kernel@lists.debian.org) (x86_64-linux-gnu-gcc-12 (Debian 12.2.0-14+deb12u1) "
              "12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.12.38-1~deb12u1 "
              "(2025-07-20)")


@pytest.mark.parametrize("release, version", [
    (BOOKWORM, (6, 1, 192)),                                   # not the compiler's "Debian 12.2.0"
    ("Linux version " + BOOKWORM, (6, 1, 192)),               # as /proc/version and the console print it
    (BOOKWORM.replace("6.1.0-56", "6.1.0-57").replace("6.1.192-2", "6.1.192-3"), (6, 1, 192)),
    (BOOKWORM_612, (6, 12, 38)),
    ("6.1.0-56-amd64 (gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0)", (6, 1, 0)),   # no banner: its own numbers
    ("6.1.0-56-amd64", (6, 1, 0)),
    ("6.12.3", (6, 12, 3)),
    ("6.12", (6, 12)),
    ("6.13.0-rc1 #7 SMP PREEMPT_DYNAMIC Tue Jan 7 10:00:00 UTC 2025", (6, 13, 0)),
])
def test_upstream_version(release: str, version: tuple[int, ...]) -> None:
    assert upstream_version(release) == version


@pytest.mark.parametrize("junk", ["", "vmlinux", "linux-image-amd64", "6", "#1 SMP"])
def test_upstream_version_of_junk_is_an_error(junk: str) -> None:
    with pytest.raises(ImageError, match="cannot tell the kernel version"):
        upstream_version(junk)


def test_a_debian_kernel_is_judged_by_its_package_version_not_its_abi_name() -> None:
    req = requires('requires:\n  kernel: ">= 6.1.150"\n')
    assert req.why_not(upstream_version(BOOKWORM), never, never) is None
    assert req.why_not(upstream_version("6.1.0-56-amd64"), never, never) is not None


# --------------------------------------------------------------------------- debian-newest: references

def test_newest_refs_parse() -> None:
    assert parse_ref("debian-newest:6.1") == NewestRef("6.1", "amd64", "debian-newest:6.1")
    assert parse_ref(" debian-newest:6.12/cloud-amd64 ") == NewestRef("6.12", "cloud-amd64",
                                                                       "debian-newest:6.12/cloud-amd64")
    assert check_kernel("debian-newest:6.1", REPO_KERNELS) is None


@pytest.mark.parametrize("text, fragment", [
    ("debian-newest:6", "'6' is not a kernel line; give major.minor"),
    ("debian-newest:", "is not a kernel line"),
    ("debian-newest:6.1.2", "is not a kernel line"),
    ("debian-newest:v6.1", "is not a kernel line"),
    ("debian-newest:6.1/BAD", "'BAD' is not a kernel flavour"),
    ("debian-newest:6.1/cloud_amd64", "is not a kernel flavour"),
    ("debian-newest:6.1/-amd64", "is not a kernel flavour"),
])
def test_bad_newest_refs(text: str, fragment: str) -> None:
    with pytest.raises(KernelRefError) as info:
        parse_ref(text)
    assert fragment in str(info.value) and repr(text.strip()) in str(info.value)
    assert check_kernel(text, REPO_KERNELS) == str(info.value)


@pytest.mark.parametrize("ref, package, ok", [
    ("debian-newest:6.1", "linux-image-6.1.0-56-amd64", True),
    ("debian-newest:6.1", "linux-image-6.1.0-57-amd64", True),
    ("debian-newest:6.1", "linux-image-6.1.0-56-amd64-dbg", False),
    ("debian-newest:6.1", "linux-image-6.1.0-56-amd64-unsigned", False),
    ("debian-newest:6.1", "linux-image-6.1.0-56-cloud-amd64", False),
    ("debian-newest:6.1", "linux-image-6.1.0-56-rt-amd64", False),
    ("debian-newest:6.1", "linux-image-amd64", False),                    # the meta-package
    ("debian-newest:6.1", "linux-headers-6.1.0-56-amd64", False),
    ("debian-newest:6.1", "linux-image-6.10.0-1-amd64", False),           # another line that starts with 6.1
    ("debian-newest:6.1", "linux-image-6.12.117+deb12-amd64", False),
    ("debian-newest:6.12", "linux-image-6.12.117+deb12-amd64", True),
    ("debian-newest:6.12", "linux-image-6.12.41+deb13-amd64", True),
    ("debian-newest:6.12", "linux-image-6.12.117+deb12-amd64-dbg", False),
    ("debian-newest:6.12", "linux-image-6.12.117+deb12-amd64-unsigned", False),
    ("debian-newest:6.12", "linux-image-6.12.117+deb12-cloud-amd64", False),
    ("debian-newest:6.12", "linux-image-6.1.0-56-amd64", False),
    ("debian-newest:6.1/cloud-amd64", "linux-image-6.1.0-56-cloud-amd64", True),
    ("debian-newest:6.1/cloud-amd64", "linux-image-6.1.0-56-amd64", False),
    ("debian-newest:6.12/cloud-amd64", "linux-image-6.12.117+deb12-cloud-amd64", True),
])
def test_newest_ref_matches_kernel_images_of_its_line_and_flavour(ref: str, package: str, ok: bool) -> None:
    parsed = parse_ref(ref)
    assert isinstance(parsed, NewestRef)
    assert parsed.matches(package) is ok


# --------------------------------------------------------------------------- Debian version order

@pytest.mark.parametrize("low, high", [
    ("1.0~rc1", "1.0"),
    ("9.9", "1:0.1"),
    ("6.1.192-2", "6.1.192-3"),
    ("2.40", "2.40-2"),
    ("1.0", "1.0a"),
    ("6.12.117-1~deb12u1", "6.12.117-1"),
    ("1.0~~", "1.0~"),
    ("1.0", "1.0+b1"),
    ("1.0", "1.0.1"),
    ("6.1.9-1", "6.1.10-1"),                 # numbers compare as numbers
    ("6.1.192-2", "6.12.5-1"),
    ("1.0-1", "1.0-1.1"),
    ("1:1.0", "2:0.1"),
    ("a", "b"),
    ("1.0-a", "1.0-b"),
    ("1.0a", "1.0+"),                        # letters sort before other characters
])
def test_dpkg_orderings(low: str, high: str) -> None:
    assert compare_debian_versions(low, high) == -1
    assert compare_debian_versions(high, low) == 1


@pytest.mark.parametrize("a, b", [("1.0", "1.0-0"), ("0:1.0", "1.0"), ("01", "1"), ("6.1.0192-2", "6.1.192-2")])
def test_dpkg_equal_versions(a: str, b: str) -> None:
    assert compare_debian_versions(a, b) == compare_debian_versions(b, a) == 0


VERSIONS = st.from_regex(r"([0-9]:)?[0-9][0-9A-Za-z.+~]{0,8}(-[0-9A-Za-z.+~]{1,6}){0,2}", fullmatch=True)


@settings(max_examples=250, deadline=None)
@given(a=VERSIONS, b=VERSIONS, c=VERSIONS)
def test_debian_version_order_is_a_total_order(a: str, b: str, c: str) -> None:
    ab = compare_debian_versions(a, b)
    assert ab in (-1, 0, 1)
    assert compare_debian_versions(b, a) == -ab
    assert compare_debian_versions(a, a) == 0
    ordered = sorted([a, b, c], key=_Key)
    assert compare_debian_versions(ordered[0], ordered[2]) <= 0
    if compare_debian_versions(a, b) <= 0 and compare_debian_versions(b, c) <= 0:
        assert compare_debian_versions(a, c) <= 0


class _Key:
    def __init__(self, version: str) -> None:
        self.version = version

    def __lt__(self, other: _Key) -> bool:
        return compare_debian_versions(self.version, other.version) < 0


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="dpkg is not installed")
def test_debian_version_order_agrees_with_dpkg() -> None:
    """dpkg itself as the oracle, on random valid versions (one shell for all of them)."""
    rng = random.Random(20261122)

    def part(length: int) -> str:
        return "".join(rng.choice("0123456789ab.+~") for _ in range(length))

    def version() -> str:
        v = rng.choice("0123456789") + part(rng.randint(0, 5))
        if rng.random() < 0.5:
            v += "-" + rng.choice("0123456789a+~") + part(rng.randint(0, 3))
        return f"{rng.randint(0, 2)}:{v}" if rng.random() < 0.2 else v

    pairs = [(version(), version()) for _ in range(150)]
    script = "\n".join(f"if dpkg --compare-versions '{a}' lt '{b}'; then echo -1; "
                       f"elif dpkg --compare-versions '{a}' eq '{b}'; then echo 0; else echo 1; fi" for a, b in pairs)
    out = subprocess.run(["sh"], input=script, capture_output=True, text=True, check=True, timeout=60).stdout.split()
    assert len(out) == len(pairs)
    wrong = [(a, b, int(o), compare_debian_versions(a, b)) for (a, b), o in zip(pairs, out, strict=True)
             if int(o) != compare_debian_versions(a, b)]
    assert not wrong


# --------------------------------------------------------------------------- apt-cache policy, newest

POLICY = """\
linux-image-6.1.0-56-amd64:
  Installed: (none)
  Candidate: 6.1.192-2
  Version table:
     6.1.192-2 500
        500 http://deb.example/debian bookworm/main amd64 Packages
linux-image-6.1.0-57-amd64:
  Installed: (none)
  Candidate: 6.1.192-3
  Version table:
     6.1.192-3 500
"""


def test_parse_policy_reads_each_candidate() -> None:
    assert parse_policy(POLICY) == {"linux-image-6.1.0-56-amd64": "6.1.192-2",
                                    "linux-image-6.1.0-57-amd64": "6.1.192-3"}
    assert newest(parse_policy(POLICY)) == ("linux-image-6.1.0-57-amd64", "6.1.192-3")


def test_parse_policy_skips_packages_without_a_candidate() -> None:
    text = POLICY + """\
linux-image-6.1.0-58-amd64:
  Installed: (none)
  Candidate: (none)
  Version table:
linux-image-6.1.0-55-amd64:
  Installed: 6.1.190-1
  Candidate: 6.1.190-1
  Version table:
 *** 6.1.190-1 100
        100 /var/lib/dpkg/status
N: Unable to locate package linux-image-6.1.0-99-amd64
"""
    found = parse_policy(text)
    assert found == {"linux-image-6.1.0-56-amd64": "6.1.192-2", "linux-image-6.1.0-57-amd64": "6.1.192-3",
                     "linux-image-6.1.0-55-amd64": "6.1.190-1"}
    assert parse_policy("") == {}
    assert newest({}) is None


def test_newest_picks_the_highest_version_then_the_highest_abi() -> None:
    assert newest({"linux-image-6.1.0-57-amd64": "6.1.192-3", "linux-image-6.1.0-56-amd64": "6.1.200-1"}) == \
        ("linux-image-6.1.0-56-amd64", "6.1.200-1")
    same = {"linux-image-6.1.0-10-amd64": "6.1.192-2", "linux-image-6.1.0-9-amd64": "6.1.192-2",
            "linux-image-6.1.0-56-amd64": "6.1.192-2"}
    assert newest(same) == ("linux-image-6.1.0-56-amd64", "6.1.192-2")
    assert newest(dict(reversed(same.items()))) == ("linux-image-6.1.0-56-amd64", "6.1.192-2")
    assert newest({"linux-image-6.1.0-10-amd64": "6.1.192-2", "linux-image-6.1.0-9-amd64": "6.1.192-2"}) == \
        ("linux-image-6.1.0-10-amd64", "6.1.192-2")                      # 10 > 9 as numbers
    assert newest({"linux-image-6.12.117+deb12-amd64": "6.12.117-1~deb12u1",
                   "linux-image-6.12.118+deb12-amd64": "6.12.118-1~deb12u1"}) == \
        ("linux-image-6.12.118+deb12-amd64", "6.12.118-1~deb12u1")


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.integers(1, 99).map(lambda n: f"linux-image-6.1.0-{n}-amd64"),
                       st.tuples(st.integers(150, 200), st.integers(1, 4)).map(lambda t: f"6.1.{t[0]}-{t[1]}"),
                       min_size=1, max_size=8))
def test_newest_is_a_maximum_whatever_the_order(candidates: dict[str, str]) -> None:
    package, version = newest(candidates)      # type: ignore[misc]
    assert candidates[package] == version
    assert all(compare_debian_versions(version, v) >= 0 for v in candidates.values())
    assert newest(dict(reversed(candidates.items()))) == (package, version)
