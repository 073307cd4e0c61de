"""How long an action's first step (``actions-common/bootstrap.py``) takes: today's version against this one.

Each variant runs from a clean checkout (a ``git archive`` of the files the bootstrap reads), against the
public package index (the local pip configuration, mirrors and find-links are switched off), twice:

* cold: no virtualenv and an empty pip/uv cache (a fresh ``PIP_CACHE_DIR``/``UV_CACHE_DIR``): a runner
  whose ``actions/cache`` missed;
* warm: the virtualenv is present (the second Cargohold step of a job, or an ``actions/cache`` hit).

Variants: ``before`` is the bootstrap of ``--before`` (default: the ``main`` branch), which installs the server's
dependencies too; ``pip`` and ``uv`` are this checkout's bootstrap with each installer. The order of the
variants alternates between rounds so that a machine getting busier does not favour one of them.

    python bench/bootstrap_bench.py [--rounds 3] [--before main] [--python python3]

Not a test: it needs the package index and takes a minute or two. Prints one line per run and a summary
with the ratios the issue asks about (cold ``uv``/``pip`` against cold ``before``; warm in seconds).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = ("pyproject.toml", "README.md", "src", "actions-common")


def checkout(revision: str | None, into: Path) -> Path:
    """The bootstrap's inputs at ``revision`` (``None``: the working tree, uncommitted changes included)."""
    into.mkdir(parents=True)
    if revision is None:
        for name in FILES:
            origin = ROOT / name
            if origin.is_dir():
                ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".cargohold-venv", "*.egg-info")
                shutil.copytree(origin, into / name, ignore=ignore)
            else:
                shutil.copy2(origin, into / name)
        return into
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, *FILES], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def environment(cache: Path, installer: str | None, tools: Path | None) -> dict[str, str]:
    """The public index only, a private cache, and ``uv`` on PATH only for the uv variant."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "GITHUB_", "VIRTUAL_ENV"))}
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_CACHE_DIR=str(cache / "pip"),
        UV_CACHE_DIR=str(cache / "uv"),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    if "PIP_CERT" in os.environ:
        env["PIP_CERT"] = os.environ["PIP_CERT"]
        env.setdefault("SSL_CERT_FILE", os.environ["PIP_CERT"])
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and not (Path(p) / "uv").exists()]
    if installer == "uv":
        assert tools is not None
        path.insert(0, str(tools))
    env["PATH"] = os.pathsep.join(path)
    if installer == "pip":
        env["CARGOHOLD_INSTALLER"] = "pip"
    return env


def run(python: str, tree: Path, env: dict[str, str]) -> float:
    started = time.monotonic()
    result = subprocess.run(
        [python, "-I", str(tree / "actions-common" / "bootstrap.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"bootstrap in {tree} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", default="main", help="git revision of today's bootstrap (default: main)")
    parser.add_argument("--python", default="python3", help="the runner's python3")
    parser.add_argument("--uv", default=shutil.which("uv"), help="the uv binary for the uv variant")
    args = parser.parse_args()
    uv_dir = Path(args.uv).resolve().parent if args.uv else None
    variants = ["before", "pip"] + (["uv"] if uv_dir else [])
    if not uv_dir:
        print("no uv found (pass --uv PATH): measuring pip only")
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="cargohold-bootstrap-bench-") as tmp:
        for round_number in range(args.rounds):
            order = variants if round_number % 2 == 0 else list(reversed(variants))
            for variant in order:
                work = Path(tmp) / f"{variant}-{round_number}"
                tree = checkout(args.before if variant == "before" else None, work / "checkout")
                env = environment(work / "cache", None if variant == "before" else variant, uv_dir)
                cold = run(args.python, tree, env)
                warm = run(args.python, tree, env)
                times.setdefault((variant, "cold"), []).append(cold)
                times.setdefault((variant, "warm"), []).append(warm)
                print(f"round {round_number + 1} {variant:<6} cold {cold:6.2f}s  warm {warm:5.2f}s", flush=True)
                shutil.rmtree(work, ignore_errors=True)
    print("\nmedians:")
    for variant in variants:
        cold = statistics.median(times[(variant, "cold")])
        warm = statistics.median(times[(variant, "warm")])
        ratio = cold / statistics.median(times[("before", "cold")])
        print(f"  {variant:<6} cold {cold:6.2f}s ({ratio:.2f}x of before)  warm {warm:5.2f}s")


if __name__ == "__main__":
    main()
