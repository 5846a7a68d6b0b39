#!/usr/bin/env bash
# Run iqlearn_jax on a Cloud TPU VM (single host or pod slice). Every step is one gcloud call; pods run the same
# command on all workers (--worker=all) with IQLEARN_DISTRIBUTED=1, so every worker calls jax's no-argument
# jax.distributed.initialize() (jax reads the worker list and ids from the TPU VM metadata server). MODEL_DIR must be
# a directory all workers share (e.g. an NFS/Filestore or gcsfuse mount). SIGTERM (preemption) on any worker: all
# workers save one checkpoint at the same step and exit 0; run the same train command again to resume.
#
#   TPU_NAME=iq-v4 ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 launch/tpu_vm.sh create
#   TPU_NAME=iq-v4 ZONE=us-central2-b launch/tpu_vm.sh setup
#   TPU_NAME=iq-v4 ZONE=us-central2-b launch/tpu_vm.sh train --gin_file=runs/finetune.gin \
#       --gin_file=models/t5_1_1_base.gin --gin_file=tasks/xsum.gin --gin_file=objectives/iqlearn.gin \
#       --gin.MODEL_DIR="'/mnt/shared/xsum_iqlearn'"
#   TPU_NAME=iq-v4 ZONE=us-central2-b launch/tpu_vm.sh delete
#
# Environment: TPU_NAME, ZONE (required); ACCELERATOR_TYPE (create; default v4-8); RUNTIME_VERSION (create;
# default tpu-ubuntu2204-base); REPO_URL (setup; default: this checkout's origin); PROJECT (optional gcloud project);
# IQLEARN_DATA_DIR (train; a gs:// or local folder with the task files, passed through); DRY_RUN=1 prints the
# gcloud commands instead of running them.
set -euo pipefail

usage() {
  sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

[ $# -ge 1 ] || usage
step="$1"
shift
: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU zone, e.g. us-central2-b}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
REPO_URL="${REPO_URL:-$(git -C "$(dirname "$0")" remote get-url origin 2>/dev/null || echo '')}"
project_flag=()
[ -n "${PROJECT:-}" ] && project_flag=(--project="$PROJECT")

run() {
  if [ "${DRY_RUN:-0}" = "1" ]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" --worker=all \
    --command="$1"
}

case "$step" in
  create)
    run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" \
      --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION"
    ;;
  setup)
    [ -n "$REPO_URL" ] || { echo "setup: set REPO_URL to the git URL of iqlearn_jax" >&2; exit 2; }
    on_all_workers "set -e; [ -d iqlearn_jax ] || git clone '$REPO_URL' iqlearn_jax; cd iqlearn_jax; git pull --ff-only; \
python3 -m venv .venv; .venv/bin/pip install -q -e '.[tpu]'"
    ;;
  train)
    [ $# -ge 1 ] || { echo "train: pass the iqlearn_jax.train flags (--gin_file=... --gin.MODEL_DIR=...)" >&2; exit 2; }
    args=$(printf '%q ' "$@")
    on_all_workers "cd iqlearn_jax && IQLEARN_DISTRIBUTED=1 IQLEARN_DATA_DIR='${IQLEARN_DATA_DIR:-}' .venv/bin/python -m iqlearn_jax.train $args"
    ;;
  evaluate)
    args=$(printf '%q ' "$@")
    on_all_workers "cd iqlearn_jax && IQLEARN_DATA_DIR='${IQLEARN_DATA_DIR:-}' .venv/bin/python -m iqlearn_jax.evaluate $args"
    ;;
  delete)
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" --quiet
    ;;
  *)
    echo "unknown step '$step': expected create, setup, train, evaluate or delete" >&2
    exit 2
    ;;
esac
