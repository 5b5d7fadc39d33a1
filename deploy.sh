#!/usr/bin/env bash
# Deploy the Mask2Former safety-barrier function to CVAT's Nuclio (local platform, Docker).
# Run ./deploy.sh --help for usage.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly REPO_ROOT
readonly FUNCTION_SRC="${REPO_ROOT}/functions/mask2former-barrier"
readonly DEFAULT_CONFIG="configs/safetybarrier/instance-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml"
readonly PROJECT="cvat"
readonly NETWORK="${BARRIER_NUCLIO_NETWORK:-cvat_cvat}"
readonly STAGE_ROOT="${BARRIER_DEPLOY_STAGE:-${REPO_ROOT}/build/nuclio}"
readonly PYTHON="${PYTHON:-python3}"

usage() {
    cat <<'EOF'
Usage: ./deploy.sh [--gpu] [--interactor] --weights FILE_OR_URL [--config FILE]

Builds and deploys the mask2former-barrier CVAT function with nuctl (Nuclio's CLI) on the
local Docker daemon, in the Nuclio project "cvat" (CVAT lists only that project's functions).

  --weights FILE_OR_URL  checkpoint (.pth / .pkl), an http(s):// or detectron2:// URL, or a
                         model-zoo file name (e.g. model_final_86143f.pkl). URLs and names are
                         downloaded once, now, into the weights cache and copied into the image;
                         the function never fetches weights per request.
  --config FILE          model config (default: configs/.../maskformer2_swin_tiny_bs16_50ep.yaml).
                         A config outside the repository's configs/ must not use _BASE_.
  --gpu                  GPU image (function-gpu.yaml; CUDA torch, one worker per GPU).
  --interactor           deploy the click interactor (mask2former-barrier-interactor) instead
                         of the detector (mask2former-barrier).
  -h, --help             show this help.

Environment: BARRIER_NUCLIO_NETWORK (docker network of CVAT, default cvat_cvat),
BARRIER_DEPLOY_STAGE (staging folder, default build/nuclio), PYTHON (for URL downloads).
Afterwards: nuctl get function --platform local
EOF
}

die() {
    echo "deploy.sh: error: $1" >&2
    exit "${2:-1}"
}

gpu=0
interactor=0
weights=""
config=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --gpu) gpu=1 ;;
        --interactor) interactor=1 ;;
        --weights | --config)
            [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)" 2
            if [[ "$1" == "--weights" ]]; then weights="$2"; else config="$2"; fi
            shift ;;
        --weights=*) weights="${1#*=}" ;;
        --config=*) config="${1#*=}" ;;
        *) die "unknown argument '$1' (see --help)" 2 ;;
    esac
    shift
done

for tool in nuctl docker; do
    command -v "$tool" >/dev/null 2>&1 \
        || die "'$tool' not found on PATH: install Nuclio's nuctl (matching CVAT's Nuclio version) and Docker first" 3
done
docker info >/dev/null 2>&1 || die "the Docker daemon is not reachable ('docker info' failed)" 3

[[ -n "$weights" ]] || die "--weights is required (see --help)" 2
config="${config:-${REPO_ROOT}/${DEFAULT_CONFIG}}"
[[ -f "$config" ]] || die "config file not found: $config" 2
config="$(cd "$(dirname "$config")" && pwd)/$(basename "$config")"

name="mask2former-barrier"
yaml="function"
if [[ $interactor -eq 1 ]]; then name="${name}-interactor"; yaml="${yaml}-interactor"; fi
if [[ $gpu -eq 1 ]]; then yaml="${yaml}-gpu"; fi
yaml="${yaml}.yaml"
[[ -f "${FUNCTION_SRC}/${yaml}" ]] || die "missing ${FUNCTION_SRC}/${yaml}" 1

# Resolve the weights to a local file before building anything.
if [[ -f "$weights" ]]; then
    weights_file="$weights"
elif [[ "$weights" =~ ^(https?|detectron2):// || ( "$weights" != */* && "$weights" == *.pkl ) ]]; then
    echo "deploy.sh: fetching weights $weights (once, into the weights cache)"
    weights_file="$(PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}" "$PYTHON" -c \
        'import sys; from mask2former.weights import resolve_weights; print(resolve_weights(sys.argv[1]))' \
        "$weights")" || die "could not fetch weights '$weights'" 2
else
    die "weights file not found: $weights (give a file, an http(s):// URL or a model-zoo name)" 2
fi

# Stage one build context: function files, the source the function imports (the model and the
# CVAT side it serves; no training code), config and weights.
stage="${STAGE_ROOT}/${name}"
rm -rf "$stage"
mkdir -p "$stage/product/barrier_annotator" "$stage/model/weights"
cp "${FUNCTION_SRC}/main.py" "${FUNCTION_SRC}/model_handler.py" "${FUNCTION_SRC}"/function*.yaml \
    "${FUNCTION_SRC}"/requirements*.txt "$stage/"
cp -R "${REPO_ROOT}/mask2former" "${REPO_ROOT}/configs" "$stage/product/"
cp "${REPO_ROOT}/barrier_annotator/__init__.py" "$stage/product/barrier_annotator/"
cp -R "${REPO_ROOT}/barrier_annotator/cvat" "${REPO_ROOT}/barrier_annotator/serving" "$stage/product/barrier_annotator/"
find "$stage/product" -name __pycache__ -type d -prune -exec rm -rf {} +
cp "$weights_file" "$stage/model/weights/"

case "$config" in
    "${REPO_ROOT}/configs/"*)
        # keep _BASE_ chains working: the staged config points into the staged configs/ tree
        printf '_BASE_: /opt/nuclio/product/%s\n' "${config#"${REPO_ROOT}/"}" >"$stage/model/config.yaml" ;;
    *)
        if grep -q '^_BASE_' "$config"; then
            die "config $config uses _BASE_ but is outside ${REPO_ROOT}/configs: flatten it or move it there" 2
        fi
        cp "$config" "$stage/model/config.yaml" ;;
esac
echo "deploy.sh: staged ${name} (${yaml}) in ${stage}"

# Nuclio project "cvat": CVAT lists only its functions. Creating it twice is fine.
if ! output="$(nuctl create project "$PROJECT" --platform local 2>&1)"; then
    if [[ "$output" != *"already exists"* ]]; then
        echo "$output" >&2
        die "nuctl create project $PROJECT failed" 4
    fi
fi

nuctl deploy --project-name "$PROJECT" --path "$stage" --file "$stage/$yaml" --platform local \
    --platform-config "{\"attributes\": {\"network\": \"${NETWORK}\"}}" \
    || die "nuctl deploy of ${name} failed (see the build log above)" 4

echo "deploy.sh: deployed ${name}. See it with: nuctl get function --platform local"
