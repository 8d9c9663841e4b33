#!/bin/sh
# The monthly update: `casm-cloud update RECIPE --until <last complete month>`
# for every recipe given (the CronJob gives the CASM and the SoMo.ml recipes;
# their sources come from the cloud catalog, catalogs/cloud.yaml).  Installed in
# the image as /usr/local/bin/casm-monthly-update (deploy/Dockerfile).
#
#   casm-monthly-update [--cluster SPEC] RECIPE.yaml [RECIPE.yaml ...]
#
# Every recipe is tried, even after one fails (they write different stores;
# an update is idempotent, so a retried Job redoes nothing that finished).
# Exit status: 0 when every update succeeded, 1 when any failed (the Job then
# fails and is retried / alerted on), 2 for a usage error.
#
# Environment:
#   UNTIL       last day to include, YYYY-MM-DD (default: the last day of the
#               previous month, UTC, i.e. the last complete month)
#   CASM_CLOUD  the command to run (default: casm-cloud on PATH)
set -u

usage() {
    echo "usage: $0 [--cluster SPEC] RECIPE.yaml [RECIPE.yaml ...]" >&2
    exit 2
}

cluster=""
while [ $# -gt 0 ]; do
    case "$1" in
        --cluster) [ $# -ge 2 ] || usage; cluster="$2"; shift 2 ;;
        --cluster=*) cluster="${1#--cluster=}"; shift ;;
        -h|--help) usage ;;
        --) shift; break ;;
        -*) echo "$0: unknown option $1" >&2; usage ;;
        *) break ;;
    esac
done
[ $# -gt 0 ] || usage

if [ -z "${UNTIL:-}" ]; then
    # The first of this month (UTC) minus one day.
    UNTIL="$(date -u -d "$(date -u +%Y-%m-01) - 1 day" +%Y-%m-%d)" || {
        echo "$0: cannot compute the last day of the previous month" >&2
        exit 2
    }
fi
case "$UNTIL" in
    [0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]) ;;
    *) echo "$0: UNTIL=$UNTIL is not YYYY-MM-DD" >&2; exit 2 ;;
esac

cmd="${CASM_CLOUD:-casm-cloud}"
failed=""
n_ok=0
for recipe in "$@"; do
    echo "casm-monthly-update: $recipe --until $UNTIL" >&2
    if [ -n "$cluster" ]; then
        "$cmd" -v update "$recipe" --until "$UNTIL" --cluster "$cluster"
    else
        "$cmd" -v update "$recipe" --until "$UNTIL"
    fi
    rc=$?
    if [ "$rc" -eq 0 ]; then
        n_ok=$((n_ok + 1))
    else
        echo "casm-monthly-update: FAILED (exit $rc): $recipe" >&2
        failed="$failed $recipe"
    fi
done

if [ -n "$failed" ]; then
    echo "casm-monthly-update: $n_ok of $# updates succeeded; failed:$failed" >&2
    exit 1
fi
echo "casm-monthly-update: all $# updates succeeded (until $UNTIL)" >&2
exit 0
