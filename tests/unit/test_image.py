"""bzImage headers and payloads, on images built in the test; .deb reading on a package built in the test."""

from __future__ import annotations

import io
import lzma
import struct
import tarfile
from pathlib import Path

import pytest

from framework.errors import ImageError
from framework.kernel.fetch import deb_extract, deb_members
from framework.kernel.image import extract_vmlinux, read_setup_header

ELF = b"\x7fELF\x02\x01\x01" + b"\0" * 57


def bzimage(payload: bytes, release: str = "6.1.0-test (me@here) #1 SMP") -> bytes:
    setup_sects = 3
    pm = (setup_sects + 1) * 512
    img = bytearray(pm + len(payload) + 16)
    img[0x1F1] = setup_sects
    img[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", img, 0x206, 0x20F)
    struct.pack_into("<H", img, 0x20E, 0x300 - 0x200)
    img[0x300:0x300 + len(release) + 1] = release.encode() + b"\0"
    struct.pack_into("<II", img, 0x248, 0, len(payload))
    img[pm:pm + len(payload)] = payload
    return bytes(img)


def test_header_and_xz_payload() -> None:
    img = bzimage(lzma.compress(ELF, format=lzma.FORMAT_XZ))
    hdr = read_setup_header(img)
    assert hdr.compression == "xz" and hdr.release == "6.1.0-test (me@here) #1 SMP"
    assert hdr.protocol == 0x20F
    assert extract_vmlinux(img) == ELF


@pytest.mark.parametrize("image, fragment", [
    (b"MZ" + b"\0" * 1000, "not an x86 bzImage"),
    (bzimage(b"\xfd7zXZ\x00garbage-not-xz"), "does not decompress"),
    (bzimage(lzma.compress(b"not an elf", format=lzma.FORMAT_XZ)), "not an ELF"),
    (bzimage(b"\x04\x22\x4d\x18lz4-frame"), "not supported"),
])
def test_corrupt_images_are_one_line_errors(image: bytes, fragment: str) -> None:
    with pytest.raises(ImageError, match=fragment) as err:
        extract_vmlinux(image, "k.img")
    assert "\n" not in str(err.value) and str(err.value).startswith("k.img:")


def test_truncated_image() -> None:
    img = bzimage(lzma.compress(ELF, format=lzma.FORMAT_XZ))
    with pytest.raises(ImageError, match="truncated or corrupt"):
        read_setup_header(img[:0x820])


def _deb(tmp_path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        for name, body in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(f"./{name}")
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    out = bytearray(b"!<arch>\n")
    for name, body in (("debian-binary", b"2.0\n"), ("control.tar.xz", b""), ("data.tar.xz", data.getvalue())):
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n".encode()
        out += body + (b"\n" if len(body) % 2 else b"")
    path = tmp_path / "pkg_1.0_amd64.deb"
    path.write_bytes(bytes(out))
    return path


def test_deb_extract_takes_only_wanted_files(tmp_path: Path) -> None:
    deb = _deb(tmp_path, {"boot/vmlinuz-6.1": b"kernel", "lib/modules/x.ko": b"mod", "boot/config-6.1": b"CONFIG_X=y"})
    assert set(deb_members(deb)) == {"debian-binary", "control.tar.xz", "data.tar.xz"}
    out = tmp_path / "out"
    out.mkdir()
    got = deb_extract(deb, lambda n: {"boot/vmlinuz-6.1": "bzImage", "boot/config-6.1": "config"}.get(n), out)
    assert got["bzImage"].read_bytes() == b"kernel" and got["config"].read_bytes() == b"CONFIG_X=y"
    assert sorted(p.name for p in out.iterdir()) == ["bzImage", "config"]


def test_deb_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.deb"
    bad.write_bytes(b"not an ar archive")
    with pytest.raises(ImageError, match="not a Debian package"):
        deb_members(bad)
    deb = _deb(tmp_path, {}, links={"bin/busybox": "../usr/bin/busybox"})
    with pytest.raises(ImageError, match="is a link to"):
        deb_extract(deb, lambda n: "busybox" if n == "bin/busybox" else None, tmp_path)


def test_a_full_disk_while_unpacking_is_said_as_such_not_a_corrupt_package(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15: a full disk was reported as a corrupt .deb, with advice to delete it."""
    import errno

    from framework.errors import InfrastructureError
    from framework.kernel.fetch import deb_extract
    deb = _deb(tmp_path, {"boot/vmlinuz-6.1.0-56-amd64": b"x" * 100})

    def full(self: Path, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", full)
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(InfrastructureError, match=rf"no space left on the device holding {dest} while unpacking "
                                                  rf"{deb.name} \(\d+ MB free\): free some space") as info:
        deb_extract(deb, lambda name: "vmlinuz" if name.startswith("boot/") else None, dest)
    assert "corrupt" not in str(info.value) and "delete" not in str(info.value)
