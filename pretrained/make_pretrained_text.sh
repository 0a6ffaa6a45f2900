#!/usr/bin/env bash
# How the shipped text-to-video weights were made: the project's own commands on procedural clouds, on one
# of the project's 2-core CPU machines (AMD EPYC without AVX-512). Run from an empty folder with the package
# installed; the outputs copied into pretrained/ are named at the end. The recorded run's logs sit
# beside the weights.
set -euo pipefail
export GLOG_v=3
PRETRAINED="$(python -c 'from latte_toolkit.pretrained import PRETRAINED; print(PRETRAINED)')"

# 1. the start: an unconditional Latte of latte-clouds-base.yaml's architecture, 2000 steps from scratch on 192
#    clips drifting left or right at 1-3 px/frame (faster than latte-clouds-base's 0.4-1.2), its raw weights
#    (its EMA at step 2000 still holds 0.999^2000 = 13 % of the random start)
python -c "from latte_toolkit.tools.synthetic import write_cloud_dataset; write_cloud_dataset('base-videos', videos=192, num_frames=32, size=64, seed=7, speed=(1.0, 3.0))"
latte ingest --source base-videos --out base-ingest --num-frames 8 --workers 0
latte cache --manifest base-ingest --vae "$PRETRAINED/vae-clouds" --out base-cache --format numpy --image-size 64 --workers 0
latte train -c "$PRETRAINED/latte-clouds-base.yaml" --cache base-cache --output-dir base-run --max-steps 2000

# 2. the text encoder: a tokenizer learned from every caption the generator writes (each caption word is
#    one token) and a CLIP text tower of RANDOM weights (32 wide, 4 layers, 4 heads; seed 0: the text
#    projection, 77 x 32 -> 192, keeps the Latte under 20 MB)
python -c "from latte_toolkit.tools.demo_text_encoder import write_caption_text_encoder; write_caption_text_encoder('text-clouds')"

# 3. 192 captioned clips, 32 frames of 64x64 at 1-3 px/frame: 16 per (direction, sky colour) pairing, 12
#    pairings (synthetic.trained_pairings: the 4 of HELD_OUT_COMBINATIONS are left out; the demo reports
#    them apart)
python -c "
from latte_toolkit.tools.synthetic import trained_pairings, write_captioned_cloud_dataset
write_captioned_cloud_dataset('videos', trained_pairings(), clips_per_combination=16, num_frames=32, size=64, seed=11)"
latte ingest --source videos/captions.csv --out ingest --num-frames 8 --workers 0

# 4. their latents and caption embeddings
latte cache --manifest ingest --vae "$PRETRAINED/vae-clouds" --out cache --text-encoder text-clouds \
    --format numpy --image-size 64 --workers 0

# 5. start.ckpt: step 1's raw weights and a text projection of zeros (the model starts as that one; the
#    projection's gradient is not zero, so it learns to read the caption)
python -c "
import json, numpy as np
from latte_core.checkpoint import read_state_dict, save_weights
ema = read_state_dict('base-run/ckpt/step-00002000/ema.ckpt')
trained = read_state_dict('base-run/ckpt/step-00002000/train_state.ckpt')
state = {name: trained[name] for name in ema}
hidden = state['t_embedder.mlp.0.bias'].shape[0]
width = json.load(open('text-clouds/text_encoder/config.json'))['hidden_size']
state['text_embedding_projection.1.weight'] = np.zeros((hidden, 77 * width), np.float32)
state['text_embedding_projection.1.bias'] = np.zeros(hidden, np.float32)
save_weights(state, 'start.ckpt')"

# 6. the text Latte: pretrained/latte-clouds-text.yaml (1000 steps; its pretrained_model_path is start.ckpt)
latte train -c "$PRETRAINED/latte-clouds-text.yaml" --cache cache --output-dir latte-text-run

# copied: text-clouds/ -> pretrained/text-clouds/
#         latte-text-run/ckpt/step-00001000/{ema.ckpt, state.json}, latte-text-run/{train_log.jsonl, loss_curve.png}
#         -> pretrained/latte-clouds-text/
