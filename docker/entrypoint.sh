#!/usr/bin/env bash
# sftlaunch job entrypoint: train | eval | publish | all   (anything else: run it as a command)
#
# Environment (set by the launcher's rendered task or the local backend):
#   SFTLAUNCH_RECIPE   path of the recipe YAML (required)
#   SFTLAUNCH_RUN_ID   run id (sftl-<name>-<hex>); keys bucket copies and resume
#   SFTLAUNCH_OUT      output dir (default /data/sftlaunch/<run id>)
#   SFTLAUNCH_STEPS    for `all`: comma list of steps (default train,eval,publish)
#   SFTLAUNCH_RATES (or SFTLAUNCH_USD_PER_HOUR), SFTLAUNCH_CONTROL, SFTLAUNCH_PLAN, ...: read by
#                      the jobs (sftcore/contract.py JobEnv)
# With SFTLAUNCH_RUN_ID and the recipe's output.bucket, metrics.jsonl, logs/, STOPPED and exit.json
# are copied to <bucket>/<run id>/ every SFTLAUNCH_SYNC_EVERY s (60) and at the end (jobs sync
# reads the bucket from the recipe; the budget, resources.max_usd, comes from the recipe too).
#   SKYPILOT_NODE_RANK / _NODE_IPS / _NUM_NODES / _NUM_GPUS_PER_NODE: multi-node (jobs/dist.py)
#
# Each step's output goes, with secret values masked, to stdout and to $OUT/logs/<step>.log
# (<step>.node<R>.log on worker nodes). $OUT/exit.json records how the job ended (head node).
#
# Exit codes: 0 ok, also when training was stopped early (the in-job budget guard or the
# launcher's stop request: jobs train writes $OUT/STOPPED and exits 0) -- eval and publish are then
# skipped and the line "sftlaunch: run stopped ..." is printed; 1 failed; 2 bad input.
#
# Not one of the steps: the arguments are a command, run in place of this script. Clouds that
# start the image with their own command hand it to the ENTRYPOINT as arguments: RunPod cannot
# override an image's entrypoint and passes its pod start command (`bash -c '<sshd set-up>;
# sleep infinity'`, sky/provision/runpod/utils.py) as the container's arguments.
set -euo pipefail

step="${1:-}"
case "$step" in
  train|eval|publish|all) ;;
  *)
    if [ -n "$step" ] && command -v -- "$step" >/dev/null 2>&1; then
      exec "$@"
    fi
    # The whole start command as one argument (how RunPod stores it: one dockerArgs string).
    if [ "$#" -eq 1 ] && [[ "$step" == *" "* ]]; then
      exec bash -c "$step"
    fi
    echo "error: usage: entrypoint.sh train|eval|publish|all, or a command to run (got '${step}')" >&2
    exit 2 ;;
esac

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"   # /opt/sftlaunch in the image, the checkout otherwise
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${SFTLAUNCH_PYTHON:-$(command -v python || command -v python3)}"

die() { echo "error: $*" >&2; exit 2; }

[ -n "${SFTLAUNCH_RECIPE:-}" ] || die "SFTLAUNCH_RECIPE is not set; point it at the recipe YAML"
[ -f "$SFTLAUNCH_RECIPE" ] || die "SFTLAUNCH_RECIPE=$SFTLAUNCH_RECIPE: no such file"
RUN_ID="${SFTLAUNCH_RUN_ID:-}"
OUT="${SFTLAUNCH_OUT:-}"
if [ -z "$OUT" ]; then
  [ -n "$RUN_ID" ] || die "set SFTLAUNCH_OUT or SFTLAUNCH_RUN_ID"
  OUT="/data/sftlaunch/$RUN_ID"
fi
export SFTLAUNCH_OUT="$OUT"
RANK="${SKYPILOT_NODE_RANK:-0}"
LOGS="$OUT/logs"
mkdir -p "$LOGS"

# The step functions run on the left of a pipe (run_step), where bash ignores `set -e`: every
# command ends its step on failure itself (`|| return $?`), or a failed check would go on to train.
do_train() {
  "$PY" -m jobs.dist info "$SFTLAUNCH_RECIPE" || return $?
  local args=(--recipe "$SFTLAUNCH_RECIPE" --out "$OUT")
  if [ -n "$RUN_ID" ]; then args+=(--run-id "$RUN_ID"); fi
  "$PY" -m jobs.dist train "${args[@]}" || return $?
}
do_eval() {
  [ "$RANK" = "0" ] || { echo "eval runs on the head node only (this is node $RANK)"; return 0; }
  "$PY" -m jobs eval --model "$OUT/final" --recipe "$SFTLAUNCH_RECIPE" --out "$OUT/eval" ${RUN_ID:+--run-id "$RUN_ID"} || return $?
}
do_publish() {
  [ "$RANK" = "0" ] || { echo "publish runs on the head node only (this is node $RANK)"; return 0; }
  "$PY" -m jobs publish --recipe "$SFTLAUNCH_RECIPE" --run-dir "$OUT" ${RUN_ID:+--run-id "$RUN_ID"} || return $?
}

# -- bucket copy of metrics and logs ---------------------------------------------------------------
sync_pid=""
SYNC=(push --out "$OUT" --recipe "$SFTLAUNCH_RECIPE" --run-id "$RUN_ID")
start_sync() {
  [ -n "$RUN_ID" ] || return 0
  "$PY" -m jobs sync "${SYNC[@]}" --every "${SFTLAUNCH_SYNC_EVERY:-60}" --parent "$$" &
  sync_pid=$!
}
stop_sync() {
  [ -n "$sync_pid" ] || return 0
  kill "$sync_pid" 2>/dev/null || true
  wait "$sync_pid" 2>/dev/null || true
  sync_pid=""
}

log_file() {
  if [ "$RANK" = "0" ]; then echo "$LOGS/$1.log"; else echo "$LOGS/$1.node$RANK.log"; fi
}

# run_step NAME FUNCTION: FUNCTION's output, masked, to stdout and the step's log file, while the
# bucket copy is refreshed in the background; returns FUNCTION's exit code.
run_step() {
  local name="$1" rc=0
  shift
  start_sync
  set +e
  "$@" 2>&1 | "$PY" -m jobs sync mask --tee "$(log_file "$name")"
  rc=${PIPESTATUS[0]}
  set -e
  stop_sync
  return "$rc"
}

# -- how the job ended -----------------------------------------------------------------------------
STOPPED_WHY=""
finish() {
  local rc=$?
  trap - EXIT
  stop_sync
  if [ "$RANK" = "0" ]; then
    "$PY" -m jobs sync end --out "$OUT" --exit-code "$rc" ${STOPPED_WHY:+--stopped} || true
  fi
  if [ -n "$RUN_ID" ]; then
    "$PY" -m jobs sync "${SYNC[@]}" || echo "warning: the final copy to <bucket>/$RUN_ID/ failed" >&2
  fi
  exit "$rc"
}
trap finish EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

train_step() {
  local rc=0
  run_step train do_train || rc=$?
  if [ "$rc" = 0 ] && [ -f "$OUT/STOPPED" ]; then
    STOPPED_WHY="$(cat "$OUT/STOPPED")"
    echo "sftlaunch: run stopped before the end of training ($STOPPED_WHY); eval and publish skipped; relaunch with the same run id to resume" \
      | tee -a "$(log_file train)"
    return 0
  fi
  return "$rc"
}

case "$step" in
  train) train_step ;;
  eval) run_step eval do_eval ;;
  publish) run_step publish do_publish ;;
  all)
    IFS=',' read -r -a steps <<< "${SFTLAUNCH_STEPS:-train,eval,publish}"
    for s in "${steps[@]}"; do
      case "$s" in
        train|eval|publish|"") ;;
        *) die "SFTLAUNCH_STEPS: unknown step '$s' (use train, eval, publish)" ;;
      esac
    done
    for s in "${steps[@]}"; do
      case "$s" in
        train)
          train_step
          [ -z "$STOPPED_WHY" ] || exit 0 ;;
        eval) run_step eval do_eval ;;
        publish) run_step publish do_publish ;;
      esac
    done ;;
esac
