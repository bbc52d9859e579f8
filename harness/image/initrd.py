"""What an image's initrd and kernel tell about it without booting: the architecture (the
first ELF binary, or the kernel's header), the systemd version (libsystemd-shared-NNN.so),
the OS's name, and the drivers there before the root is mounted.

Initrds are read as the kernel reads them: archives one after the other, uncompressed
(the early microcode Debian's initramfs-tools and dracut put first), zstd frames (mkosi
appends the kernel's modules as one), and a last one in any compression.
"""

from __future__ import annotations

import contextlib
import io
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import attrs

from harness.errors import HarnessError
from harness.image.facts_cache import cache_file, identity, keep, recall

ELF_MACHINES = {"EM_X86_64": "x86_64", "EM_AARCH64": "aarch64", "EM_RISCV": "riscv64", "EM_386": "i386"}


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _decompress(data: bytes) -> bytes:
    """One xz, lzma, gzip or bzip2 stream, or the data as it is (zstd: initrd_archives)."""
    import bz2
    import gzip
    import lzma

    if data[:6] == b"\xfd7zXZ\x00" or data[:3] == b"\x5d\x00\x00":
        return lzma.LZMADecompressor().decompress(data)
    if data[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=io.BytesIO(data)).read()
    if data[:3] == b"BZh":
        return bz2.BZ2Decompressor().decompress(data)
    return data


CPIO_MAGICS = (b"070701", b"070702")


def cpio_length(archive: bytes) -> int:
    """How many bytes an uncompressed newc archive at the start of `archive` takes, up to
    and including its trailer (the whole data when it has none)."""
    pos = 0
    while archive[pos : pos + 6] in CPIO_MAGICS:
        size, namesize = int(archive[pos + 54 : pos + 62], 16), int(archive[pos + 94 : pos + 102], 16)
        name_start = pos + 110
        data_start = (name_start + namesize + 3) & ~3
        pos = (data_start + size + 3) & ~3
        if archive[name_start : name_start + namesize - 1] == b"TRAILER!!!":
            return pos
    return len(archive)


def initrd_archives(data: bytes) -> Iterator[bytes]:
    """The cpio archives of an initrd, in order: uncompressed ones (the early microcode
    that Debian's initramfs-tools and dracut put first), zstd frames (mkosi appends the
    kernel's modules as one of their own), and a last archive in another compression."""
    while data:
        if data[:6] in CPIO_MAGICS:
            length = cpio_length(data)
            yield data[:length]
            data = data[length:].lstrip(b"\0")
            continue
        if data[:4] != ZSTD_MAGIC:
            yield _decompress(data)
            return
        import zstandard

        frame = zstandard.ZstdDecompressor().decompressobj()
        yield frame.decompress(data)
        data = frame.unused_data.lstrip(b"\0")


def cpio_files(archive: bytes) -> Iterator[tuple[str, bytes]]:
    """(name, content) of the regular files of a newc cpio archive, up to its trailer."""
    pos = 0
    while archive[pos : pos + 6] in CPIO_MAGICS:
        fields = [int(archive[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = archive[name_start : name_start + namesize - 1].decode(errors="replace")
        data_start = (name_start + namesize + 3) & ~3
        if name == "TRAILER!!!":
            return
        if mode & 0o170000 == 0o100000:
            yield name, archive[data_start : data_start + size]
        pos = (data_start + size + 3) & ~3


def elf_architecture(blob: bytes) -> str | None:
    if blob[:4] != b"\x7fELF":
        return None
    from elftools.elf.elffile import ELFFile  # here: most runs read cached facts, not ELF files

    return ELF_MACHINES.get(ELFFile(io.BytesIO(blob)).header["e_machine"])


SYSTEMD_SHARED = re.compile(r"libsystemd-shared-(\d+)[.\w-]*\.so$")


MODULE = re.compile(r"/([^/]+)\.ko(\.(xz|zst|gz))?$")  # a module's file in the initrd


BUILTIN = re.compile(r"/([^/\n]+)\.ko$", re.MULTILINE)  # a line of modules.builtin


@attrs.frozen
class InitrdFacts:
    """What the initrd tells of the image; it is built from the image's own packages, so
    it speaks for the image."""

    architecture: str | None  # of the first ELF binary; None: it has none (busybox alone, static)
    # from libsystemd-shared-NNN.so (every systemd since 241); None: no systemd in the initrd
    systemd_version: int | None
    os_name: str  # PRETTY_NAME of os-release
    # The drivers there before the root is mounted: built into the kernel (its
    # modules.builtin) or modules in the initrd; None if the initrd carries no
    # modules.builtin to tell.
    drivers: frozenset[str] | None
    kernel_drivers: frozenset[str] | None = None  # those built into the kernel alone


def initrd_facts(initrd: Path) -> InitrdFacts:
    """What the initrd tells; a file none of the decoders can read is the image's fault."""
    try:
        return _read_initrd(initrd)
    except Exception as e:  # every decoder (gzip, xz, zstd, ELF) raises its own kinds
        raise HarnessError(
            f"cannot read the initrd {initrd}: {type(e).__name__}: {e}",
            "is it the image's initrd, and whole (an interrupted copy)? Give it with -Dinitrd=",
        ) from None


def _read_initrd(initrd: Path) -> InitrdFacts:
    arch, version, os_name = None, None, ""
    modules: set[str] = set()
    builtin: set[str] | None = None
    for archive in initrd_archives(initrd.read_bytes()):
        for name, content in cpio_files(archive):
            arch = arch or elf_architecture(content)
            found = SYSTEMD_SHARED.search(name)
            version = version or (int(found.group(1)) if found else None)
            if name in ("usr/lib/os-release", "etc/os-release") and not os_name:
                os_name = pretty_name(content)
            if module := MODULE.search(name):
                modules.add(driver_name(module.group(1)))
            if name.endswith("/modules.builtin"):
                builtin = (builtin or set()) | {
                    driver_name(m.group(1)) for m in BUILTIN.finditer(content.decode(errors="replace"))
                }
    if builtin is None:
        return InitrdFacts(arch, version, os_name, None)
    return InitrdFacts(arch, version, os_name, frozenset(modules | builtin), frozenset(builtin))


def known_initrd_facts(initrd: Path) -> InitrdFacts:
    """`initrd_facts`, kept beside the initrd (harness.image.facts_cache): reading them
    decompresses the whole initrd, 0.16 s in every test."""
    cache, ident = cache_file(initrd, "facts"), identity(initrd, 2)
    known = recall(cache, ident)
    with contextlib.suppress(KeyError, TypeError, ValueError):
        if known is not None:
            return InitrdFacts(
                known["architecture"],
                known["systemd_version"],
                str(known["os_name"]),
                *(None if known[k] is None else frozenset(known[k]) for k in ("drivers", "kernel_drivers")),
            )
    facts = initrd_facts(initrd)
    keep(
        cache,
        ident,
        attrs.asdict(facts, value_serializer=lambda _, __, v: sorted(v) if isinstance(v, frozenset) else v),
    )
    return facts


def driver_name(module: str) -> str:
    return module.replace("-", "_")  # the kernel treats both alike


def pretty_name(os_release: bytes) -> str:
    fields = dict(
        line.partition("=")[::2] for line in os_release.decode(errors="replace").splitlines() if "=" in line
    )
    return (fields.get("PRETTY_NAME") or fields.get("NAME") or "").strip().strip("\"'")


PE_MACHINES = {0x8664: "x86_64", 0xAA64: "aarch64", 0x5064: "riscv64", 0x14C: "i386"}


def kernel_architecture(kernel: Path) -> str | None:
    """The architecture a kernel (or a UKI) was built for, from its header: an x86 bzImage
    ("HdrS"), an arm64 or riscv64 Image (their magics), or a PE's machine field (UKIs,
    EFI-stub and zboot kernels); gzip'd Images are looked into. None when it cannot tell."""
    with kernel.open("rb") as f:
        head = f.read(65536)
    if head[:2] == b"\x1f\x8b":
        import zlib

        head = zlib.decompressobj(wbits=31).decompress(head, 65536)
    if head[0x202:0x206] == b"HdrS":
        return "x86_64" if head[0x236] & 1 else "i386"  # xloadflags: XLF_KERNEL_64
    if head[0x38:0x3C] == b"ARM\x64":
        return "aarch64"
    if head[0x38:0x3C] == b"RSC\x05":
        return "riscv64"
    if head[:2] == b"MZ" and len(head) >= 0x40:
        pe = struct.unpack_from("<I", head, 0x3C)[0]
        if head[pe : pe + 4] == b"PE\0\0":
            return PE_MACHINES.get(struct.unpack_from("<H", head, pe + 4)[0])
    return None
