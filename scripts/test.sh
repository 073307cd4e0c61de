#!/usr/bin/env bash
# Set up this machine if needed, then lint and run the whole test suite (slow and tool tests included).
# Extra arguments go to pytest. Exits non-zero if linting fails, any test fails, or no test ran.
set -uo pipefail
# shellcheck source=scripts/bootstrap.sh
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh" || exit 1

# bootstrap.sh guarantees skopeo/umoci/docker-registry, so a test that would skip for a missing tool
# must fail here instead: a silent skip in CI would hide exactly the interop we claim.
export CARGOHOLD_REQUIRE_TOOLS=1

echo "== ruff check . && ruff format --check ."
lint_rc=0
ruff check . || lint_rc=$?
ruff format --check . || lint_rc=$?
echo "== mypy (strict, src/) && lint-imports (layering)"
mypy || lint_rc=$?
lint-imports --no-cache >/dev/null || { lint-imports --no-cache; lint_rc=1; }

echo "== pytest"
# One worker per core (CI: 2), each test file on one worker (module-scoped servers stay shared within it);
# "-n 0" as an argument runs everything in this process.
python -m pytest -p no:cacheprovider -ra --durations=10 -n auto --dist loadfile "$@"
test_rc=$?

# The same test bodies once more with every test server on PostgreSQL (tests/pgcluster.py, DATABASE_ENV):
# the wire protocol, lifecycle, GC races and kill -9, and auth. Only for a whole-suite run (no arguments).
PG_SUITE=(
    tests/test_protocol_manifests.py tests/test_protocol_uploads.py tests/test_protocol_blobs.py
    tests/test_protocol_tags_catalog.py tests/test_lifecycle_api.py tests/test_gc_online.py tests/test_gc_races.py
    tests/test_crash.py tests/test_metering.py tests/test_token_lineage.py tests/test_permissions_http.py
    tests/test_auth_http.py tests/test_oidc_http.py tests/test_trust.py
)
# And the scale-out topology: servers on PostgreSQL with their blobs in an S3 bucket (moto, tests/s3server.py):
# the wire protocol, online GC and two replicas behind nginx.
SCALE_OUT_SUITE=(
    tests/test_protocol_manifests.py tests/test_protocol_uploads.py tests/test_protocol_blobs.py
    tests/test_protocol_tags_catalog.py tests/test_gc_online.py tests/test_replicas.py
)
pg_rc=0
if [ "$#" -eq 0 ]; then
    echo "== pytest, servers on PostgreSQL"
    CARGOHOLD_TEST_DATABASE=postgresql python -m pytest -p no:cacheprovider -ra -n auto --dist loadfile "${PG_SUITE[@]}"
    pg_rc=$?
    echo "== pytest, servers on PostgreSQL with blobs in S3"
    CARGOHOLD_TEST_DATABASE=postgresql CARGOHOLD_TEST_BLOB_STORE=s3 \
        python -m pytest -p no:cacheprovider -ra -n auto --dist loadfile "${SCALE_OUT_SUITE[@]}" || pg_rc=$?
    if [ "$test_rc" -eq 0 ]; then test_rc=$pg_rc; fi
fi

echo
echo "================ summary ================"
if [ "$lint_rc" -eq 0 ]; then echo "lint:  ok"; else echo "lint:  FAILED (ruff, mypy or lint-imports; exit $lint_rc)"; fi
case "$test_rc" in
    0) echo "tests: ok" ;;
    5) echo "tests: FAILED (pytest collected no tests)" ;;
    *) echo "tests: FAILED (pytest exit $test_rc)" ;;
esac
if [ "$pg_rc" -ne 0 ]; then echo "       (a PostgreSQL / S3 pass failed: exit $pg_rc)"; fi
if [ "$lint_rc" -ne 0 ]; then exit "$lint_rc"; fi
exit "$test_rc"
