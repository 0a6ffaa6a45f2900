"""`latte sample` of text-conditioned checkpoints: prompts, their encoder, guidance and the bad inputs.

The model is a tiny text Latte (2 blocks, width 64, 4 frames of 8x8 latents, text_embed_dim 32) with
random weights everywhere (the reference initialisation zeroes the output layers, so its videos would
not depend on the prompt). Its encoder is a 32-wide CLIP text model with random weights on the fixture's
real CLIP vocabulary (the fixture's own random encoder embeds prompts too alike for a prompt to show in a
tiny model's videos)."""
import json
import shutil

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from conftest import relative_error
from latte_toolkit.cli import main

LONG_PROMPT = " ".join(["clouds drifting left over a blue sky"] * 12)  # 84 words: more than 77 tokens
TRAINED = {"model_name": "Latte-S/2", "depth": 2, "hidden_size": 64, "num_heads": 4, "condition": "text",
           "num_classes": 0, "image_size": 32, "num_frames": 4, "learn_sigma": True, "patch_embedder": "conv",
           "sd_scale_factor": None}
ARCHITECTURE = {k: TRAINED[k] for k in ("model_name", "depth", "hidden_size", "num_heads", "condition", "image_size",
                                        "num_frames")}


@pytest.fixture(scope="module")
def text_model(tmp_path_factory, fixtures_dir):
    """The tiny text Latte as a .ckpt, run folders around it (one recording its encoder in state.json, one
    not), and encoders: the one it was 'trained' with, another 32-wide one (another seed) and a 16-wide one."""
    from latte_core import TextEncoder, create_latte
    from latte_core.checkpoint import save_weights
    from latte_toolkit.tools.demo_text_encoder import write_random_text_encoder
    root = tmp_path_factory.mktemp("text_model")
    model = create_latte(TRAINED["model_name"], input_size=8, num_frames=4, depth=2, hidden_size=64, num_heads=4,
                         condition="text", text_embed_dim=32)
    rng = np.random.default_rng(0)
    weights = {p.name: p.asnumpy() if p.name in ("pos_embed", "temp_embed")
               else rng.normal(0.0, 0.05, p.shape).astype(np.float32) for p in model.get_parameters()}
    ckpt = save_weights(weights, root / "latte_text.ckpt")
    tokenizer = fixtures_dir / "text" / "clip_text_small" / "tokenizer"
    encoders = {name: write_random_text_encoder(root / name, tokenizer / "vocab.json", tokenizer / "merges.txt",
                                                hidden_size=width, num_hidden_layers=1, num_attention_heads=2,
                                                seed=seed)
                for name, width, seed in (("encoder", 32, 0), ("other", 32, 1), ("narrow", 16, 0))}
    recorded = {"path": encoders["encoder"], "sha256": TextEncoder.from_pretrained(encoders["encoder"]).sha256}
    runs = {}
    for name, state in {"recorded": {"text_encoder": recorded}, "unrecorded": {}}.items():
        folder = root / name / "ckpt" / "step-00000001"
        folder.mkdir(parents=True)
        shutil.copyfile(ckpt, folder / "ema.ckpt")
        (folder / "state.json").write_text(json.dumps({"step": 1, "config": TRAINED, **state}))
        runs[name] = folder
    return {"ckpt": ckpt, "vae": fixtures_dir / "vae" / "vae_small_diffusers", **encoders, "runs": runs,
            "recorded": recorded}


def _config(tmp_path, text_model, **overrides):
    """A sampling YAML for the tiny text model (an override of None drops the key)."""
    config = {"checkpoint": text_model["ckpt"], "vae_checkpoint": str(text_model["vae"]), **ARCHITECTURE,
              "text_encoder": text_model["encoder"], "sampling_steps": 5, "ddim_sampling": True,
              "num_videos": 2, "batch_size": 2, "seed": 3, "output_path": str(tmp_path / "out")}
    config.update(overrides)
    config = {k: v for k, v in config.items() if v is not None}
    path = tmp_path / f"sample-{len(list(tmp_path.glob('sample-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _sample(config, folder, *args):
    """(summary.json, the videos' latents) of one `latte sample -c config ...` into folder."""
    result = CliRunner().invoke(main, ["sample", "-c", config, "--output-dir", str(folder), *args])
    assert result.exit_code == 0, result.output
    summary = json.loads((folder / "summary.json").read_text())
    return summary, np.stack([np.load(folder / f"sample_{i:03d}.npy") for i in range(summary["videos"])])


def test_video_i_gets_prompt_i_mod_n_whatever_its_batch_and_summary_json_records_it(text_model, tmp_path, caplog):
    """A run folder's checkpoint, sampled with guided DDPM (stochastic steps: each video's own (seed, i)
    noise streams) by the encoder its state.json records. Videos 0, 1, 2 with prompts A, B get A, B, A.
    Video 1 is the same video when B is the only prompt and the batch is 1 instead of 3; video 0 changes
    when its prompt does. Bound 1e-4 of the latents' scale, as for class models: only the batch the matmuls
    see differs (float32 rounding); another prompt changes a video by percents."""
    prompts = ["clouds drifting right", LONG_PROMPT]
    config = _config(tmp_path, text_model, checkpoint=str(text_model["runs"]["recorded"]), text_encoder=None,
                     ddim_sampling=False, num_videos=3, batch_size=3, **dict.fromkeys(ARCHITECTURE))
    summary, both = _sample(config, tmp_path / "both", "--prompt", prompts[0], "--prompt", prompts[1],
                            "--cfg-scale", "4")
    assert summary["prompts"] == [{"file": str(tmp_path / "both" / f"sample_{i:03d}.gif"), "prompt": prompts[i % 2]}
                                  for i in range(3)]
    assert summary["condition"] == "text" and summary["guidance_scale"] == 4.0
    assert summary["text_encoder"] == text_model["recorded"]  # the encoder the run recorded, by default
    # the over-long prompt is cut to 77 tokens, and the encoder's one warning reaches the log once
    assert [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()] == [
        "1 of 2 prompts are longer than 77 tokens and were truncated to 77"]
    _, long_only = _sample(config, tmp_path / "long", "--prompt", LONG_PROMPT, "--cfg-scale", "4",
                           "--num-videos", "2", "--batch-size", "1")
    assert relative_error(long_only[1], both[1]) < 1e-4
    assert relative_error(long_only[0], both[0]) > 1e-2
    assert relative_error(both[2], both[0]) > 0.1  # the same prompt, another video's noise


def test_guidance_uses_the_empty_prompt_and_cfg_1_is_the_plain_conditional_model(text_model, tmp_path):
    """The CLI's videos against the same sampling written with the public API: DDIM (eta 0: the initial
    noise, seeded by (seed, video index, 0), fixes a video), the prompts through TextEncoder.encode; cfg 1
    calls the model once per video, cfg 4 guides it by the empty prompt's embedding (Latte.forward_with_cfg
    on the doubled batch). Bound 1e-4 of the latents' scale: the API's guided model runs op by op, the
    CLI's compiled (float32 rounding); guidance changes the videos by far more."""
    import mindspore as ms
    from mindspore import Tensor
    from latte_core import TextEncoder, create_latte
    from latte_core.checkpoint import load_weights
    from latte_core.samplers import create_sampler, sample

    prompts = ["clouds drifting up", "a grey sky"]
    config = _config(tmp_path, text_model)
    runs = {scale: _sample(config, tmp_path / f"cfg{scale}", "--prompt", prompts[0], "--prompt", prompts[1],
                           "--cfg-scale", scale) for scale in ("1", "4")}
    assert runs["1"][0]["guidance_scale"] is None and runs["4"][0]["guidance_scale"] == 4.0

    model = create_latte("Latte-S/2", input_size=8, num_frames=4, depth=2, hidden_size=64, num_heads=4,
                         condition="text", text_embed_dim=32)
    load_weights(model, text_model["ckpt"])
    model.set_train(False)
    encoder = TextEncoder.from_pretrained(text_model["encoder"])
    text, empty = encoder.encode(prompts), encoder.encode([""])
    noise = np.stack([np.random.default_rng([3, i, 0]).standard_normal((4, 4, 8, 8), dtype=np.float32)
                      for i in range(2)])
    sampler, diffusion, steps = create_sampler("ddim", 5)
    plain = sample(sampler, diffusion, steps, model, noise.shape, noise=noise,
                   model_kwargs={"text_embedding": Tensor(text)}).asnumpy()
    assert relative_error(runs["1"][1], plain) < 1e-4

    def guided(x, t, text_embedding):
        return model.forward_with_cfg(x, t, cfg_scale=4.0, text_embedding=text_embedding)

    ms.set_context(mode=ms.PYNATIVE_MODE)  # forward_with_cfg called as it is, outside a compiled cell
    doubled = sample(sampler, diffusion, steps, guided, (4,) + noise.shape[1:], noise=np.concatenate([noise, noise]),
                     model_kwargs={"text_embedding": Tensor(np.concatenate([text, empty, empty]))}).asnumpy()[:2]
    assert relative_error(runs["4"][1], doubled) < 1e-4
    assert relative_error(runs["4"][1], runs["1"][1]) > 1e-2


def test_an_encoder_other_than_the_one_the_run_recorded_is_refused_unless_forced(text_model, tmp_path, caplog):
    recorded, run, other = text_model["recorded"], str(text_model["runs"]["recorded"]), text_model["other"]
    config = _config(tmp_path, text_model, checkpoint=run, text_encoder=None, num_videos=1, batch_size=1,
                     sampling_steps=2, **dict.fromkeys(ARCHITECTURE))
    refused = tmp_path / "refused"
    result = CliRunner().invoke(main, ["sample", "-c", config, "--prompt", "clouds", "--text-encoder", other,
                                       "--output-dir", str(refused)])
    assert result.exit_code == 2 and not refused.exists() and result.stderr.count("Error:") == 1
    assert all(name in result.stderr for name in (other, recorded["path"], recorded["sha256"], "--force-text-encoder"))

    summary, _ = _sample(config, tmp_path / "forced", "--prompt", "clouds", "--text-encoder", other,
                         "--force-text-encoder")
    assert summary["text_encoder"]["path"] == other and summary["text_encoder"]["sha256"] != recorded["sha256"]
    forced = [r.getMessage() for r in caplog.records if "force_text_encoder" in r.getMessage()]
    assert len(forced) == 1 and other in forced[0] and recorded["path"] in forced[0]


def test_bad_text_sampling_requests_are_one_clear_error_and_write_nothing(text_model, latte_fixture, tmp_path):
    empty, blank, latin1 = tmp_path / "empty.txt", tmp_path / "blank.txt", tmp_path / "latin1.txt"
    empty.write_bytes(b"")
    blank.write_text("\n   \n\t\n")
    latin1.write_bytes("clouds\nnuages d'\u00e9t\u00e9\n".encode("latin-1"))
    class_model = {"checkpoint": str(latte_fixture["pt"]), "depth": 4, "hidden_size": 96, "condition": "class",
                   "num_classes": 5, "text_encoder": None}
    unrecorded = {"checkpoint": str(text_model["runs"]["unrecorded"]), "text_encoder": None,
                  **dict.fromkeys(ARCHITECTURE)}
    cases = [  # (config overrides, options, what the one Error line must say)
        (class_model, ["--prompt", "clouds"], ["prompts is for text models", "condition: class"]),
        (class_model, ["--prompts-file", str(blank)], ["prompts_file is for text models"]),
        ({}, [], ["is a text model", "--prompt"]),
        ({}, ["--prompts-file", str(empty)], [f"prompts_file {empty}", "holds no prompt"]),
        ({}, ["--prompt", "a", "--prompts-file", str(blank)], [f"prompts_file {blank}", "holds no prompt"]),
        ({}, ["--prompts-file", str(latin1)], [f"prompts_file {latin1}", "not UTF-8", "line 2"]),
        ({}, ["--prompts-file", str(tmp_path / "missing.txt")], ["missing.txt", "cannot read"]),
        ({"prompts": [1, 2]}, [], ["prompts must be a list of strings"]),
        ({}, ["--prompt", "a", "--text-encoder", text_model["narrow"]], ["16-wide", "32-wide", text_model["narrow"]]),
        (unrecorded, ["--prompt", "a"], ["text_encoder", "state.json has no text_encoder", "--text-encoder"]),
        ({"text_encoder": None}, ["--prompt", "a"], ["text_encoder", "a weights file records none", "--text-encoder"]),
        ({}, ["--prompt", "a", "--text-encoder", str(tmp_path / "no_encoder")], ["no_encoder"]),
    ]
    for overrides, options, expected in cases:
        out = tmp_path / "never"
        result = CliRunner().invoke(main, ["sample", "-c", _config(tmp_path, text_model, **overrides), *options,
                                           "--output-dir", str(out)])
        assert result.exit_code == 2, (options, result.output)
        assert result.stderr.count("Error:") == 1 and all(e in result.stderr for e in expected), result.stderr
        assert not out.exists()


def test_help_and_keys_document_the_text_options():
    help_text = CliRunner().invoke(main, ["sample", "--help"]).output
    for flag in ("--prompt TEXT", "--prompts-file", "--text-encoder", "--force-text-encoder"):
        assert flag in help_text
    keys = CliRunner().invoke(main, ["sample", "--keys"]).output
    for key in ("prompts", "prompts_file", "text_encoder", "force_text_encoder"):
        assert f"\n{key} [" in keys
    assert "null, class or text" in keys
