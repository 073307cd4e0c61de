#!/usr/bin/env bash
# Regenerate actions-common/requirements.lock: the hash-pinned runtime dependencies the three GitHub Actions
# install into their private virtualenv (see actions-common/bootstrap.py and docs/github-actions.md). Only the
# client set, [project].dependencies: the actions never run the server, so its extra is not locked.
#
# Why a script: the lock must be reproducible by anyone and must only ever come from the public PyPI index
# (not a developer's local mirror or find-links), and it must be proven to install on every runner we
# support before it is committed. Run it after changing [project].dependencies in pyproject.toml; the test
# suite (tests/test_actions_static.py) fails while the lock and pyproject disagree.
#
# Usage: bash actions-common/lock.sh [--no-verify]
#   needs pip-tools in the current Python (pip install pip-tools) and access to PyPI.
# Environment: PYTHON (default: python3), LOCK_INDEX_URL (default: https://pypi.org/simple)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
python="${PYTHON:-python3}"
index="${LOCK_INDEX_URL:-https://pypi.org/simple}"
lock="$here/requirements.lock"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Ignore local pip configuration (mirrors, find-links, caches of unknown origin): only the index above counts.
export PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS="" PIP_EXTRA_INDEX_URL="" PIP_INDEX_URL="$index"

cd "$root"
echo "[lock] resolving pyproject.toml (client dependencies, no extras) against $index" >&2
"$python" -m piptools compile --quiet --generate-hashes --allow-unsafe --strip-extras \
    --no-emit-index-url --no-emit-find-links --index-url "$index" \
    --output-file "$tmp/requirements.lock" \
    pyproject.toml
# Keep the command line in the header relative and stable, whatever the temporary path was.
sed -e "s#$tmp/requirements.lock#actions-common/requirements.lock#" "$tmp/requirements.lock" > "$tmp/lock.out"

if [ "${1:-}" != "--no-verify" ]; then
    # Every supported runner must install the lock from wheels alone: no compilers on a runner, and a
    # fall-back sdist build would run arbitrary code at action time.
    for pyver in 3.11 3.12; do
        for arch in x86_64 aarch64; do
            # pip takes --platform literally, so list every manylinux level a glibc 2.35 runner accepts
            # (ubuntu-22.04, the oldest GitHub-hosted image we support).
            platforms=(--platform "manylinux2014_$arch")
            for glibc in 17 24 26 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${glibc}_$arch"); done
            echo "[lock] checking CPython $pyver on linux/$arch" >&2
            "$python" -m pip install --quiet --dry-run --ignore-installed --no-deps --require-hashes \
                --only-binary=:all: --implementation cp --python-version "$pyver" "${platforms[@]}" \
                --target "$tmp/target" -r "$tmp/lock.out"
        done
    done
fi

mv "$tmp/lock.out" "$lock"
echo "[lock] wrote $lock" >&2
