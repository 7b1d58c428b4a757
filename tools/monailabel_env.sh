#!/usr/bin/env bash
# Create (or reuse) the virtual environment that runs the MONAI Label server for monailabel_app/.
#
#   bash tools/monailabel_env.sh [VENV_DIR]        # default: .venv-monailabel in the repository root
#
# MONAI Label 0.8.5 (the latest release) pins old DICOM packages and needs numpy<2, and its `sam2` requirement
# pulls a multi-GB CUDA torch + torchvision. So, in a venv of its own:
#   1. the CPU torch wheel first (a bare `torch` requirement would pull a CUDA build),
#   2. the requirements of monailabel 0.8.5 that its server imports, WITHOUT sam2, torchvision, openslide,
#      numpymaxflow (the server starts without them with `--conf sam2 false`; PyPI's torchvision does not load
#      beside the CPU torch, and only MONAI Label's BundleInferTask needs it, which monailabel_app/ does not use);
#      itk-core + itk-io only (MONAI Label writes labels with itk); girder-client needs setuptools<81
#      (pkg_resources),
#   3. monailabel itself with --no-deps, then this repository (-e .).
# Re-running is cheap: an environment that already imports everything is reused.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-$ROOT/.venv-monailabel}"
PY="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

check() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<'EOF' 2>/dev/null
import importlib.metadata as md
import fastapi, uvicorn, monai, monailabel, prato_components, pydicom, torch  # noqa: F401
from monailabel.interfaces.app import MONAILabelApp  # noqa: F401
from monailabel.tasks.infer.basic_infer import BasicInferTask  # noqa: F401
import monailabel.app  # noqa: F401  (what `monailabel start_server` imports)
assert md.version("monailabel") == "0.8.5" and torch.__version__.startswith("2.13.0")
EOF
}

if check; then
  echo "MONAI Label environment ready: $VENV"
  exit 0
fi

"$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q)
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" \
  "numpy<2" "monai==1.6.1" nibabel scikit-image pillow pytorch-ignite tqdm psutil fire einops jsonschema \
  "uvicorn==0.29.0" "pydantic==2.7.0" "pydantic-settings==2.2.1" "python-dotenv==1.0.1" "fastapi==0.110.2" \
  "python-multipart==0.0.9" "httpx==0.27.0" "schedule==1.2.1" "dicomweb-client==0.59.1" "timeloop==1.0.2" \
  "expiringdict==1.2.2" "expiring_dict==1.1.0" "cachetools==5.3.3" "watchdog==4.0.0" "pydicom==2.4.4" \
  "pydicom-seg==0.4.1" "pynetdicom==2.0.2" "pynrrd==1.0.0" "pyyaml>=6.0.1" "filelock>=3.11.0" "passlib==1.7.4" \
  "pyjwt==2.8.0" "bcrypt==4.1.2" "shapely>=2.0.4" "requests>=2.32.2" "requests-toolbelt==1.0.0" \
  "urllib3>=2.2.2" scikit-learn scipy "google-auth==2.29.0" "girder-client==3.2.3" "setuptools<81" \
  "itk-core==5.4.7" "itk-io==5.4.7"
"${PIP[@]}" --no-deps "monailabel==0.8.5"
"${PIP[@]}" -e "$ROOT"
if ! check; then
  echo "the MONAI Label environment in $VENV does not import monailabel + prato_components" >&2
  exit 1
fi
echo "MONAI Label environment ready: $VENV"
