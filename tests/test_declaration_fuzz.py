"""A seeded fuzzer of declarations, through the wrapper's own reading and checking
(declaration_file, declaration.TestDeclaration.from_options), in process: every generated
declaration is accepted or stopped by a DeclarationError naming the test's meson.build
and a key; never another exception, a hang, or memory beyond a bound. The worst of them
also go through real `meson setup` in test_declaration_meson.py."""

from __future__ import annotations

import os
import random
import resource
import time
from pathlib import Path

import pytest

from harness.declaration import declaration
from harness.declaration import file as declaration_file
from harness.declaration.keys import KEYS
from harness.errors import DeclarationError

SEED = 20261203
CASES = 2500

HOSTILE_TEXT = [
    "",
    "-",
    "--",
    "--help",
    "-h",
    "9" * 4300,
    "-1",
    "0",
    "1e3",
    " 12",
    "true",
    "yes",
    "\x00",
    "a\x00b",
    "\r",
    "\x0b",
    "\x0c",
    "\x1c",
    "\x85",
    "\u2028",
    "\u2029",
    "\\",
    "\\n",
    "\n--test-dir=/etc",
    "v\u2029--test-dir=/etc",
    "v\x85--help",
    "v\r--firmware=uefi",
    "{'a' : 'b'}",
    "['a', 'b']",
    "[]",
    "{}",
    "é\u00ff\U0001f600",
    "uefi",
    "persistent",
    "cold",
    "linux",
    "test_host.py",
    "../../etc/passwd",
    "/etc/passwd",
]
HOSTILE_CREDENTIALS = [
    "c=v\u2029--test-dir=/etc",
    "x=@fifo",
    "x=@link",
    "x=@loop",
    "x=@sub",
    "x=@.",
    "x=@big",
    "x=@/dev/zero",
    "x=@../../../../../../../../dev/zero",
    "x=@../../../../etc/passwd",
    "x=@a\x00b",
    "x=@missing",
    "x=@ok.txt",
    "x=env:",
    "x=env:1BAD",
    "x=env:HOME",
    "=v",
    "no-equals",
    "../x=v",
    "harness.testcases=v",
]
RAW_LINES = [b"--name=\xff\xfe", b"--cmdline=\xc3", b"garbage", b"--=x", b"--declared=bogus", b"-x=y"]


@pytest.fixture(scope="module")
def test_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fuzz") / "TEST-42-FUZZ"
    d.mkdir()
    (d / "ok.txt").write_text("fine\n")
    (d / "test_host.py").write_text("def test_x(machine): pass\n")
    (d / "big").write_bytes(b"x" * (1024 * 1024 + 1))
    (d / "sub").mkdir()
    os.mkfifo(d / "fifo")
    (d / "link").symlink_to("/etc/passwd")
    (d / "loop").symlink_to("loop")  # a symlink loop: resolving it raises, in some Pythons RuntimeError
    return d


def base(test_dir: Path) -> list[str]:
    """A declaration as meson writes it for a plain test: every key declared."""
    declared = [f"--declared={'configuration:' if k.configuration else ''}{k.name}" for k in KEYS]
    return [
        f"--test-dir={test_dir}",
        *declared,
        "--name=TEST-42-FUZZ",
        "--timeout=60",
        "--priority=0",
        "--slow=false",
        "--enabled=true",
        "--firmware=linux",
        "--exit-code=123",
        "--storage=volatile",
        "--boot=auto",
        "--host=",
        "--credentials=ok=@ok.txt",
        "--cmdline=quiet",
    ]


def mutate(rng: random.Random, options: list[str]) -> list[str]:
    options = list(options)
    names = [k.name for k in KEYS if k.name != "configuration"]
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(8)
        if kind == 0:  # a key's value replaced
            key = rng.choice(names)
            options = [o for o in options if not o.startswith(f"--{key}=")] + [
                f"--{key}={rng.choice(HOSTILE_TEXT)}"
            ]
        elif kind == 1:  # a hostile credential
            options.append(f"--credentials={rng.choice(HOSTILE_CREDENTIALS)}")
        elif kind == 2:  # a key given twice, or a second test directory
            options.append(
                rng.choice([f"--{rng.choice(names)}={rng.choice(HOSTILE_TEXT)}", "--test-dir=/etc"])
            )
        elif kind == 3:  # an unknown key, declared or passed
            options.append(
                rng.choice(["--declared=bogus", "--declared=configuration:bogus", "--bogus=1", "--=x"])
            )
        elif kind == 4:  # a line lost
            options.pop(rng.randrange(len(options)))
        elif kind == 5:  # hostile text inside a value
            i = rng.randrange(len(options))
            cut = rng.randrange(len(options[i]) + 1)
            options[i] = options[i][:cut] + rng.choice(HOSTILE_TEXT) + options[i][cut:]
        elif kind == 6:  # many values
            options += [f"--cmdline=x{i}" for i in range(rng.choice([100, 20_000]))]
        else:  # an env entry or a unit line
            options.append(
                f"--{rng.choice(['env', 'unit', 'service', 'wants', 'after'])}={rng.choice(HOSTILE_TEXT)}"
            )
    return options


def check(
    path: Path, options: list[str], env: dict[str, str] | None
) -> declaration.TestDeclaration | DeclarationError:
    """Accepted with the test directory meson wrote (nothing injected), or stopped naming
    that directory's meson.build (the declaration file, where the directory is missing)."""
    test_dir = next((o.removeprefix("--test-dir=") for o in options if o.startswith("--test-dir=")), None)
    if test_dir is not None and ("\0" in test_dir or not test_dir.startswith("/")):
        test_dir = None  # a broken directory: errors name the declaration file
    try:
        decl = declaration.TestDeclaration.from_options(
            declaration_file.parse(declaration_file.read(path), str(path)), env
        )
    except DeclarationError as e:
        assert e.source == (str(Path(test_dir) / "meson.build") if test_dir is not None else str(path)), e
        assert e.key, e
        return e
    assert str(decl.test_dir) == test_dir, "an option was injected"
    return decl


def test_generated_declarations_are_accepted_or_stopped_naming_file_and_key(test_dir, tmp_path):
    rng = random.Random(SEED)
    path = tmp_path / "TEST-42-FUZZ.declaration"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    outcomes = {"accepted": 0, "stopped": 0}
    for case in range(CASES):
        options = mutate(rng, base(test_dir))
        data = declaration_file.encode(options)
        if rng.random() < 0.1:
            data += b"\n" + rng.choice(RAW_LINES)
        else:
            assert declaration_file.decode(data, str(path)) == options, f"case {case} does not read back"
        path.write_bytes(data)
        result = check(path, options, env=None if case % 2 else {"HOME": "/root"})
        outcomes["stopped" if isinstance(result, DeclarationError) else "accepted"] += 1
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(
        f"{CASES} declarations in {time.monotonic() - start:.1f} s: {outcomes}, memory grew {grown_mb:.0f} MB"
    )
    assert grown_mb < 200
    assert outcomes["accepted"] > 100 and outcomes["stopped"] > 1000


def test_every_string_reads_back_as_written():
    rng = random.Random(SEED)
    alphabet = "a=-\\n\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x00\t @é"
    for _ in range(2000):
        options = ["--cmdline=" + "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))]
        assert declaration_file.decode(declaration_file.encode(options), "f") == [o for o in options if o]


@pytest.mark.parametrize(
    "credential, problem",
    [
        ("x=@fifo", "is not a regular file"),
        ("x=@sub", "Is a directory"),
        ("x=@big", "larger than 1 MB"),
        ("x=@../../../../etc/passwd", "outside the test's directory"),
        ("x=@link", "outside the test's directory"),
        ("x=@a\x00b", "NUL"),
    ],
)
def test_a_credential_file_that_is_not_a_small_file_of_the_test_is_refused(test_dir, credential, problem):
    options = [f"--test-dir={test_dir}", "--name=TEST-42-FUZZ", f"--credentials={credential}"]
    with pytest.raises(DeclarationError, match=problem) as e:
        declaration.TestDeclaration.from_options(declaration_file.parse(options))
    assert e.value.key == "credentials"


def test_an_absolute_credential_file_is_read_when_the_test_runs_with_the_same_checks(test_dir):
    options = [f"--test-dir={test_dir}", "--name=TEST-42-FUZZ", "--credentials=x=@/dev/zero"]
    assert (
        declaration.TestDeclaration.from_options(declaration_file.parse(options)).credentials[0].secret
    )  # setup: unread
    with pytest.raises(DeclarationError, match="not a regular file"):
        declaration.TestDeclaration.from_options(declaration_file.parse(options), env={})
