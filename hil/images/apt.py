"""Debian packages through apt, without installing anything on the host.

Resolution: `apt-get --simulate install --no-install-recommends PKGS` against an empty
dpkg status (`Dir::State::status=/dev/null`) lists every package a fresh system would
need for PKGS, with the exact version apt chose (`Inst NAME (VERSION ...)` lines). It
reads the host's package lists only: no network, no lock, nothing written.

Download: `apt-get download NAME=VERSION` into a private directory, then a rename into
the shared .deb cache. apt checks each file against the hashes of the signed lists.
Nothing reaches dpkg's database: the .debs are only ever unpacked with `dpkg-deb -x`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hil.errors import InfraError, UserError

NAME_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_INST = re.compile(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+) .*\[(\S+)\]\)", re.M)
_NET_HINTS = (
    "Temporary failure resolving",
    "Could not resolve",
    "Could not connect",
    "Connection timed out",
    "Network is unreachable",
    "No route to host",
    "Connection refused",
)


class VersionGone(InfraError):
    """apt no longer knows a remembered version (the archive moved on)."""


@dataclass(frozen=True, order=True)
class Pkg:
    name: str
    version: str
    arch: str = "amd64"

    @property
    def filename(self) -> str:
        # The same name apt gives it; ':' (an epoch) is escaped the same way.
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise InfraError(
            f"`{name}` not found on PATH: building a Linux image needs it to reach Debian's "
            f"packages. Install the Debian package `{package}`."
        )
    return path


def _base_opts() -> list[str]:
    opts = ["-q", "-o", "Dir::State::status=/dev/null", "-o", "Debug::NoLocking=1"]
    if os.geteuid() == 0:
        # As root apt drops to user _apt for downloads, which cannot write into our
        # private directory; it would fall back with a warning.
        opts += ["-o", "APT::Sandbox::User=root"]
    return opts


def _run(
    cmd: list[str], cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    env = {**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env,
                              timeout=timeout, check=False)  # fmt: skip
    except subprocess.TimeoutExpired as e:
        raise InfraError(f"`{' '.join(cmd[:3])} ...` did not finish in {timeout:.0f} s") from e
    except OSError as e:
        raise InfraError(f"cannot run {cmd[0]}: {e}") from e


def check_names(packages: tuple[str, ...], key: str = "image.packages") -> None:
    """Refuse names that cannot be Debian package names (before asking apt)."""
    for i, name in enumerate(packages):
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise UserError(
                f"{key}[{i}]: {name!r} is not a Debian package name (lower case letters, "
                "digits and + . -, at least two characters). Find the name with "
                "`apt-cache search WORD`."
            )


def candidates(packages: tuple[str, ...], key: str = "image.packages") -> dict[str, str]:
    """The candidate version of each package (apt-cache policy); a UserError naming the
    first package Debian does not have."""
    check_names(packages, key)
    if not packages:
        return {}
    p = _run([_tool("apt-cache", "apt"), "policy", *packages])
    found: dict[str, str] = {}
    current = None
    for line in p.stdout.splitlines():
        m = re.match(r"^(\S+):$", line)
        if m:
            current = m.group(1)
        elif current and line.strip().startswith("Candidate:"):
            found[current] = line.split(":", 1)[1].strip()
    for i, name in enumerate(packages):
        cand = found.get(name)
        if cand is None or cand == "(none)":
            raise UserError(
                f"{key}[{i}]: Debian has no installable package {name!r} "
                f"(`apt-cache policy {name}` finds no candidate). Check the name with "
                f"`apt-cache search {name}`; if the package lists are old or empty, run "
                "`apt-get update`."
            )
    return found


def closure(
    packages: tuple[str, ...], key: str = "image.packages", also: tuple[str, ...] = ()
) -> list[Pkg]:
    """Every package (with version) a fresh system needs to install `packages` and
    `also` (which the user did not name), as apt resolves it without recommends. No
    network."""
    candidates(packages, key)
    packages = (*also, *packages)
    p = _run([_tool("apt-get", "apt"), *_base_opts(), "--simulate", "install",
              "--no-install-recommends", *packages])  # fmt: skip
    if p.returncode != 0:
        tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-8:])
        raise UserError(
            f"{key}: apt cannot resolve the dependencies of {', '.join(packages)} on an empty "
            f"system:\n{tail}\nDrop or replace the package apt names."
        )
    pkgs = sorted({Pkg(n, v, a) for n, v, a in _INST.findall(p.stdout)})
    names = {k.name for k in pkgs}
    missing = [n for n in packages if n not in names]
    if missing:
        raise InfraError(
            f"apt's simulated install did not list {missing}; its output:\n{p.stdout[-2000:]}"
        )
    return pkgs


def depends_of(name: str, version: str) -> str:
    """The Depends field of one package version (apt-cache show)."""
    p = _run([_tool("apt-cache", "apt"), "show", f"{name}={version}"])
    m = re.search(r"^Depends: (.*)$", p.stdout, re.M)
    if p.returncode != 0 or not m:
        raise InfraError(
            f"`apt-cache show {name}={version}` gave no Depends field:\n{p.stderr[-500:]}"
        )
    return m.group(1)


def download(pkgs: list[Pkg], debs: Path, log: Callable[[str], None]) -> dict[str, Path]:
    """Make sure every package's .deb is in `debs`; returns name -> file. Downloads
    only what is missing; a half-downloaded file is never left in `debs`."""
    debs.mkdir(parents=True, exist_ok=True)
    missing = [p for p in pkgs if not (debs / p.filename).is_file()]
    if missing:
        log(f"downloading {len(missing)} Debian packages")
        with tempfile.TemporaryDirectory(prefix=".dl-", dir=debs) as tmp:
            specs = [f"{p.name}={p.version}" for p in missing]
            r = _run([_tool("apt-get", "apt"), *_base_opts(), "download", *specs], cwd=Path(tmp))
            if r.returncode != 0:
                raise _download_error(r.stdout + r.stderr)
            for p in missing:
                got = Path(tmp) / p.filename
                if not got.is_file():
                    raise InfraError(f"apt-get download {p.name}={p.version} wrote no {p.filename}")
                os.replace(got, debs / p.filename)
    return {p.name: debs / p.filename for p in pkgs}


def _download_error(out: str) -> InfraError:
    tail = "\n".join(line for line in out.splitlines() if line.startswith(("E:", "Err")))[-1500:]
    if re.search(r"^E: Version '[^']*' for '[^']*' was not found", out, re.M):
        return VersionGone(f"apt no longer offers a package version this build wants:\n{tail}")
    if any(h in out for h in _NET_HINTS):
        return InfraError(
            "downloading Debian packages failed: no network reachable (the first build of a "
            "Linux image fetches its packages through apt; later builds work offline from "
            f"the cache). apt said:\n{tail}"
        )
    return InfraError(f"apt-get download failed:\n{tail or out[-1500:]}")


def unpack(deb: Path, dest: Path) -> None:
    """dpkg-deb -x: the package's files into `dest`, no maintainer scripts, no database."""
    dest.mkdir(parents=True, exist_ok=True)
    r = _run([_tool("dpkg-deb", "dpkg"), "-x", str(deb), str(dest)])
    if r.returncode != 0:
        raise InfraError(f"dpkg-deb -x {deb.name} failed: {r.stderr.strip()[-800:]}")


def contents(deb: Path) -> list[str]:
    """The paths a .deb ships (dpkg-deb --fsys-tarfile listing), relative, no './'."""
    r = _run([_tool("dpkg-deb", "dpkg"), "-c", str(deb)])
    if r.returncode != 0:
        raise InfraError(f"dpkg-deb -c {deb.name} failed: {r.stderr.strip()[-800:]}")
    out = []
    for line in r.stdout.splitlines():
        # drwxr-xr-x root/root 0 2023-01-01 00:00 ./usr/bin/ [-> target]
        parts = line.split(None, 5)
        if len(parts) == 6:
            path = parts[5].split(" -> ")[0].split(" link to ")[0]
            out.append(path.removeprefix("./").rstrip("/"))
    return [p for p in out if p]
