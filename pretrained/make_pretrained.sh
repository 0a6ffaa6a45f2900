#!/usr/bin/env bash
# How the shipped weights were made: the project's own commands on procedural data, on one of the
# project's 2-core CPU machines. Run from an empty folder with the package installed; the outputs
# that were copied into pretrained/ are named at the end. Logs of the recorded run sit beside
# the weights (train_vae_log.jsonl, train_log.jsonl, loss_curve.png, *_summary.json).
set -euo pipefail
export GLOG_v=3

# 1. 192 clips of drifting clouds, 32 frames of 64x64 each (tools/synthetic.py, seed 7)
python -c "from latte_toolkit.tools.synthetic import write_cloud_dataset; write_cloud_dataset('videos', videos=192, num_frames=32, size=64, seed=7)"
latte ingest --source videos --out ingest --num-frames 8 --workers 0

# 2. the VAE: 3 levels (4x downsampling), 4 latent channels, L1 + 1e-3 KL, 1500 steps of 8 frames
latte train-vae --manifest ingest --out vae-clouds --image-size 64 --block-out-channels 32,64,64 \
    --layers-per-block 1 --norm-groups 16 --steps 1500 --batch 8 --lr 1e-3 --kl-weight 1e-3 --seed 0

# 3. the latent cache of the same clips, with that VAE
latte cache --manifest ingest --vae vae-clouds --out cache --format numpy --image-size 64 --workers 0

# 4. the Latte: pretrained/latte-clouds.yaml (6 blocks, 192 wide, 8 frames of 16x16 latents), trained
#    on the posterior means (posterior: mean): this VAE's posterior std is ~0.6 of its mean's magnitude, and
#    decoding posterior samples of real clips flickers more than any real clip moves (latte quality's
#    motion check fails on them), so a model trained on samples would learn that flicker.
latte train -c "$(python -c 'from latte_toolkit.pretrained import PRETRAINED; print(PRETRAINED)')/latte-clouds.yaml" \
    --cache cache --output-dir latte-run

# copied: vae-clouds/{config.json, diffusion_pytorch_model.safetensors, train_vae_log.jsonl, loss_curve.png,
#         train_vae_summary.json} -> pretrained/vae-clouds/
#         latte-run/ckpt/step-<last>/{ema.ckpt, state.json}, latte-run/{train_log.jsonl, loss_curve.png}
#         -> pretrained/latte-clouds/
