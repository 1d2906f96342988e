#!/usr/bin/env bash
# sftlaunch job entrypoint: train | eval | publish | all
#
# Environment (set by the launcher's rendered task or the local backend):
#   SFTLAUNCH_RECIPE   path of the recipe YAML (required)
#   SFTLAUNCH_RUN_ID   run id (sftl-<name>-<hex>); keys bucket copies and resume
#   SFTLAUNCH_OUT      output dir (default /data/sftlaunch/<run id>)
#   SFTLAUNCH_STEPS    for `all`: comma list of steps (default train,eval,publish)
#   SFTLAUNCH_BUCKET, SFTLAUNCH_USD_PER_HOUR, SFTLAUNCH_MAX_USD, SFTLAUNCH_CONTROL: read by the jobs
#   SKYPILOT_NODE_RANK / _NODE_IPS / _NUM_NODES / _NUM_GPUS_PER_NODE: multi-node (jobs/dist.py)
# Exit codes: 0 ok (also: stopped on the launcher's request), 1 failed, 2 bad input,
#             3 stopped by the in-job budget guard after a checkpoint (eval/publish skipped).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"   # /opt/sftlaunch in the image, the checkout otherwise
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${SFTLAUNCH_PYTHON:-$(command -v python || command -v python3)}"

die() { echo "error: $*" >&2; exit 2; }

step="${1:-}"
case "$step" in
  train|eval|publish|all) ;;
  *) die "usage: entrypoint.sh train|eval|publish|all (got '${step}')" ;;
esac
[ -n "${SFTLAUNCH_RECIPE:-}" ] || die "SFTLAUNCH_RECIPE is not set; point it at the recipe YAML"
[ -f "$SFTLAUNCH_RECIPE" ] || die "SFTLAUNCH_RECIPE=$SFTLAUNCH_RECIPE: no such file"
RUN_ID="${SFTLAUNCH_RUN_ID:-}"
OUT="${SFTLAUNCH_OUT:-}"
if [ -z "$OUT" ]; then
  [ -n "$RUN_ID" ] || die "set SFTLAUNCH_OUT or SFTLAUNCH_RUN_ID"
  OUT="/data/sftlaunch/$RUN_ID"
fi
export SFTLAUNCH_OUT="$OUT"
mkdir -p "$OUT"
RANK="${SKYPILOT_NODE_RANK:-0}"

do_train() {
  "$PY" -m jobs.dist info "$SFTLAUNCH_RECIPE"
  local args=(--recipe "$SFTLAUNCH_RECIPE" --out "$OUT")
  [ -n "$RUN_ID" ] && args+=(--run-id "$RUN_ID")
  "$PY" -m jobs.dist train "${args[@]}"
}
do_eval() {
  [ "$RANK" = "0" ] || { echo "eval runs on the head node only (this is node $RANK)"; return 0; }
  "$PY" -m jobs eval --model "$OUT/final" --recipe "$SFTLAUNCH_RECIPE" --out "$OUT/eval" ${RUN_ID:+--run-id "$RUN_ID"}
}
do_publish() {
  [ "$RANK" = "0" ] || { echo "publish runs on the head node only (this is node $RANK)"; return 0; }
  "$PY" -m jobs publish --recipe "$SFTLAUNCH_RECIPE" --run-dir "$OUT" ${RUN_ID:+--run-id "$RUN_ID"}
}

case "$step" in
  train) do_train ;;
  eval) do_eval ;;
  publish) do_publish ;;
  all)
    IFS=',' read -r -a steps <<< "${SFTLAUNCH_STEPS:-train,eval,publish}"
    for s in "${steps[@]}"; do
      case "$s" in
        train)
          do_train
          if [ -f "$OUT/STOPPED" ]; then
            echo "training was stopped before the end ($(cat "$OUT/STOPPED")); skipping eval and publish"
            exit 0
          fi ;;
        eval) do_eval ;;
        publish) do_publish ;;
        "") ;;
        *) die "SFTLAUNCH_STEPS: unknown step '$s' (use train, eval, publish)" ;;
      esac
    done ;;
esac
