#!/usr/bin/env bash
# Set up, then distil the bundled example teacher (a CNN trained on scikit-learn's 8x8 digits)
# into a LeNet-5-Half with the `fast` preset, reporting accuracy on the held-out real digits.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
"${PYTHON:-python3}" -m cake_cli.main distill examples/digits_cnn.pt --input-shape 1,8,8 --student lenet5 --width 0.5 \
    --preset fast --eval examples/digits_cnn_test.npz -o out/student.pt "$@"
