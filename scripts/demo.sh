#!/usr/bin/env bash
# Set up this machine if needed, then run the end-to-end demo (scripts/demo.py). No Docker, no network.
set -euo pipefail
# shellcheck source=scripts/bootstrap.sh
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
exec python scripts/demo.py "$@"
