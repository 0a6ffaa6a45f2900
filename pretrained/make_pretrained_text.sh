#!/usr/bin/env bash
# How the shipped text-to-video weights were made: the project's own commands on procedural clouds, on one
# of the project's 2-core CPU machines. Run from an empty folder with the package installed (after
# make_pretrained.sh: it starts from the shipped Latte); the outputs copied into pretrained/ are named at
# the end. The recorded run's log sits beside the weights (make_pretrained_text.log).
set -euo pipefail
export GLOG_v=3
PRETRAINED="$(python -c 'from latte_toolkit.pretrained import PRETRAINED; print(PRETRAINED)')"

# 1. the text encoder: a tokenizer learned from every caption the generator writes (each caption word is
#    one token) and a CLIP text tower of RANDOM weights (32 wide, 4 layers, 4 heads; seed 0: the text
#    projection, 77 x 32 -> 192, keeps the Latte under 20 MB)
[ -d text-clouds ] || python -c "from latte_toolkit.tools.demo_text_encoder import write_caption_text_encoder; write_caption_text_encoder('text-clouds')"

# 2. 192 captioned clips, 32 frames of 64x64 at 4-6 px/frame (synthetic.CLOUD_SPEED, the unconditional
#    demo's speed): 16 per (direction, sky colour) pairing, 12 pairings (synthetic.trained_pairings: the 4
#    of HELD_OUT_COMBINATIONS are left out; the demo reports them apart)
[ -d videos ] || python -c "
from latte_toolkit.tools.synthetic import trained_pairings, write_captioned_cloud_dataset
write_captioned_cloud_dataset('videos', trained_pairings(), clips_per_combination=16, num_frames=32, size=64, seed=11)"
latte ingest --source videos/captions.csv --out ingest --num-frames 8 --workers 0

# 3. their latents (vae-clouds' encoder, which vae-clouds-colours, the VAE that decodes the text model's
#    samples, shares: make_pretrained.sh step 8 fine-tuned only its decoder) and caption embeddings
latte cache --manifest ingest --vae "$PRETRAINED/vae-clouds" --out cache --text-encoder text-clouds \
    --format numpy --image-size 64 --workers 0

# 4. the text Latte: pretrained/latte-clouds-text.yaml, the shipped (unconditional) Latte's EMA fine-tuned
#    on the captioned clips with v-prediction. It has no text projection: `latte train` starts that path
#    at zero (the run starts as the shipped model; the projection's gradient is not zero, so it learns to
#    read the caption)
cp "$PRETRAINED/latte-clouds/ema.ckpt" start.ckpt
latte train -c "$PRETRAINED/latte-clouds-text.yaml" --cache cache --output-dir latte-text-run --resume

# copied: text-clouds/ -> pretrained/text-clouds/
#         latte-text-run/ckpt/step-00003000/{ema.ckpt, state.json}, latte-text-run/{train_log.jsonl, loss_curve.png}
#         -> pretrained/latte-clouds-text/
