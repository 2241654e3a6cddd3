#!/bin/sh
# The README's curl session, with the `p2l` command instead of curl and jq.
#
# Run it at the repository root with the service running and `p2l` on PATH
# (pip install ./client); P2L_URL and P2L_API_KEY say where the service is and the key.
# DEMO is the folder the demo target is written to (default: demo). FINETUNE_OPTIONS adds
# options to the fine-tune (the tests keep it tiny: "--epochs 2 --schedule manual").
set -eu
DEMO=${DEMO:-demo}
PYTHON=${PYTHON:-.venv/bin/python}
FINETUNE_OPTIONS=${FINETUNE_OPTIONS:-}

# A target that ships with the project (5 kinds of tops from Fashion-MNIST's t10k split), as
# a folder of class folders: `p2l datasets upload` zips it itself, skipping hidden files.
"$PYTHON" -m app.zoo export-target fashion --out "$DEMO"
"$PYTHON" -m zipfile -e "$DEMO/fashion.zip" "$DEMO"
# Names are handles: every command takes the dataset's, source's or model's name or id.
p2l datasets upload "$DEMO/fashion" --name tops

# Rank the zoo for it: one forward pass of the target, P2L score parts per source.
p2l rank tops --top-k 3

# Fine-tune the best source, with a from-scratch baseline; watch it with a progress bar.
# shellcheck disable=SC2086  # FINETUNE_OPTIONS holds several words on purpose
JOB=$(p2l finetune tops --source best --baseline --model-name tops-classifier $FINETUNE_OPTIONS --field id)
p2l jobs watch "$JOB"

# Classify the held-back images, export the model (ONNX, labels, model card, predict.py), add it to the zoo.
p2l predict tops-classifier "$DEMO"/fashion-heldout/*.png
p2l export tops-classifier --format onnx -o "$DEMO/fashion-model.zip"
p2l models register tops-classifier --name tops-finetuned
