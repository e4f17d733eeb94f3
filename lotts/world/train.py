"""Train the miniature world from scratch on CPU: VAE, then UNet + CLIP text encoder, then two
independent clean-vs-defect verifiers. Everything is seeded; every stage saves its result, so an
interrupted run resumes where it stopped when rerun (``--fresh`` starts over).

    python -m lotts.world.train                      # full run, writes lotts/world/assets/
    # fastest on 2 cores: two single-threaded processes in parallel (one thread per process
    # beats two threads on a shared machine; train_log.json says how the assets were made)
    python -m lotts.world.train --threads 1 --stages vae,diffusion &
    python -m lotts.world.train --threads 1 --stages verifiers       # waits for the VAE
    python -m lotts.world.train --scale 0.05 --out /tmp/world_small --ckpt /tmp/world_small_ckpt

Output (``--out``, default ``lotts/world/assets``):
    pipeline/      StableDiffusionPipeline.save_pretrained (float16 weights, loading as float32)
    verifier_a/    model.safetensors + config.json  (selection verifier, "world-clean-a")
    verifier_b/    model.safetensors + config.json  (held-out verifier,  "world-clean-b")
    train_log.json per-stage wall times, losses, verifier accuracies

Stages and sizes are set in ``STAGES`` below (steps x batch); ``--scale`` multiplies the step and
data counts. As two single-threaded processes the full run took 45 minutes on 2 CPU cores
(diffusion 3200 steps at 0.70 s/step) and reproduced the committed weights byte for byte;
``train_log.json`` of the committed assets has the measured wall times. The diffusion stage
adds a token-grounding loss (``grounding.py``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lotts.errors import WorldTrainingError
from lotts.world import grounding, scenes
from lotts.world.verifier_models import build_verifier, images_to_tensor

ASSETS = Path(__file__).resolve().parent / "assets"
CKPT = Path(os.environ.get("LOTTS_WORLD_CKPT", "/tmp/world_ckpt"))

SEED = 20251124
STAGES = {
    # images rendered for the VAE and (encoded) for the diffusion model
    "data": dict(num_examples=12000),
    # the VAE is fully convolutional (plus attention at latent resolution): it trains on random
    # 32x32 crops, a quarter of the cost of whole images
    "vae": dict(steps=1000, batch=32, crop=32, lr=2e-3, kl=1e-6),
    # grounding: weight of the token-grounding loss (lotts/world/grounding.py)
    "diffusion": dict(steps=3200, batch=32, lr=8e-4, warmup=100, cfg_dropout=0.1, ema=0.998,
                      ckpt_every=100, grounding=0.05),
    "verifier_a": dict(steps=2500, batch=32, lr=1e-3, seed=101, roundtrip=0.6, arch="a"),
    "verifier_b": dict(steps=2500, batch=32, lr=1e-3, seed=202, roundtrip=0.4, arch="b"),
}
VERIFIER_DATA = 10000  # examples per verifier stream (each with its own seed)
PLAIN_SHARE = 0.5
DEFECT_RATE = 0.4

TEXT_CONFIG = dict(vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                   num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406,
                   eos_token_id=49407, pad_token_id=49407, projection_dim=64)
VAE_CONFIG = dict(in_channels=3, out_channels=3,
                  down_block_types=("DownEncoderBlock2D",) * 3,
                  up_block_types=("UpDecoderBlock2D",) * 3,
                  block_out_channels=(16, 32, 64), layers_per_block=1, latent_channels=4,
                  norm_num_groups=8, sample_size=64)
UNET_CONFIG = dict(sample_size=16, in_channels=4, out_channels=4,
                   block_out_channels=(32, 64, 64),
                   down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                   layers_per_block=1, norm_num_groups=16, cross_attention_dim=64,
                   attention_head_dim=(1, 2, 2), use_linear_projection=True)
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                        beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                        steps_offset=1, prediction_type="epsilon")


def log(*args):
    print(time.strftime("%H:%M:%S"), *args, flush=True)


# ----- data ----------------------------------------------------------------------------------
def make_examples(seed: int, n: int, with_regions: bool = False):
    """n captioned examples: images uint8 (n, 64, 64, 3), captions, defect flags, and with
    `with_regions` the scenes and their latent-resolution grounding regions (n, G, 16, 16)."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, scenes.SIZE, scenes.SIZE, 3), np.uint8)
    captions, defective, scene_list = [], np.zeros(n, bool), []
    regions = np.zeros((n if with_regions else 0, grounding.MAX_GROUPS, grounding.LATENT,
                        grounding.LATENT), np.float16)
    for i in range(n):
        scene = scenes.sample_scene(rng)
        image, defect = scenes.render(scene), None
        if rng.random() < DEFECT_RATE:
            image, defect = scenes.plant_defect(image, scene, rng)
            defective[i] = True
        images[i] = image
        captions.append(scene.caption)
        if with_regions:
            scene_list.append(scene)
            regions[i] = grounding.example_regions(scene, defect)
    if with_regions:
        return images, captions, defective, scene_list, regions
    return images, captions, defective


def to_unit(images_uint8: np.ndarray) -> torch.Tensor:
    """uint8 (n, H, W, 3) -> float (n, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def tokenize(tokenizer, texts):
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


# ----- stage 1: VAE --------------------------------------------------------------------------
def train_vae(images: np.ndarray, cfg: dict, seed: int, out: Path, state: dict):
    from diffusers import AutoencoderKL
    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg["lr"], weight_decay=0.0)
    rng = np.random.default_rng(seed)
    steps, t0, losses = cfg["steps"], time.time(), []
    for step in range(steps):
        cosine = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps))
        lr = cfg["lr"] * min(1.0, (step + 1) / 50) * cosine
        for g in opt.param_groups:
            g["lr"] = lr
        idx = rng.integers(0, len(images), cfg["batch"])
        x = to_unit(images[idx])
        c = cfg["crop"]
        if c < x.shape[-1]:
            oy, ox = (int(v) for v in rng.integers(0, x.shape[-1] - c + 1, 2))
            x = x[..., oy: oy + c, ox: ox + c]
        if rng.random() < 0.5:  # horizontal flips are fine for the autoencoder
            x = x.flip(-1)
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample()).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + cfg["kl"] * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} loss {np.mean(losses[-50:]):.4f} ({time.time() - t0:.0f}s)")
    vae.eval()
    with torch.no_grad():
        x = to_unit(images[:256])
        z = vae.encode(x).latent_dist.mean
        scaling = float(1.0 / z.std())
        rec = vae.decode(z).sample
        state["vae_recon_mae_uint8"] = float((rec - x).abs().mean() * 127.5)
    vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(out)
    (out / "DONE").write_text("ok")
    state["vae_seconds"] = time.time() - t0
    state["vae_final_loss"] = float(np.mean(losses[-50:]))
    log(f"vae done: scaling {scaling:.4f}, recon MAE {state['vae_recon_mae_uint8']:.2f}/255")
    return vae


@torch.no_grad()
def encode_all(vae, images: np.ndarray, batch: int = 256):
    means, stds = [], []
    for start in range(0, len(images), batch):
        dist = vae.encode(to_unit(images[start: start + batch])).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


# ----- stage 2: UNet + text encoder ----------------------------------------------------------
def build_unet_and_text():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    unet = UNet2DConditionModel(**UNET_CONFIG)
    text = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    return unet, text


def train_diffusion(latents, latent_std, ids, group_tokens, regions, cfg, seed, scaling,
                    ckpt: Path, state: dict):
    """ids: (n, 3, L) token ids of [plain caption, quality-templated caption, empty];
    group_tokens (n, 3, G, L) bool: grounded words of each; regions (n, G, 16, 16)."""
    from diffusers import DDPMScheduler
    torch.manual_seed(seed)
    unet, text = build_unet_and_text()
    recorder = grounding.install_recorder(unet)
    ema = {k: v.detach().clone() for k, v in
           list(unet.state_dict().items()) + [("text." + k, v) for k, v in text.state_dict().items()]}
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=0.0)
    start, losses, ground_losses, denoise_losses = 0, [], [], []
    identity = json.loads(json.dumps({  # as stored: tuples become lists
        "unet": UNET_CONFIG, "text": TEXT_CONFIG, "examples": len(latents), "steps": cfg["steps"],
        "grounding": cfg["grounding"]}))
    if (ckpt / "diffusion.pt").exists():
        blob = torch.load(ckpt / "diffusion.pt", weights_only=False)
        if blob.get("identity") != identity:
            raise WorldTrainingError(f"{ckpt / 'diffusion.pt'} was made by a different model, data set or "
                             f"schedule ({blob.get('identity')}); use --fresh or another --ckpt")
        unet.load_state_dict(blob["unet"]), text.load_state_dict(blob["text"])
        opt.load_state_dict(blob["opt"])
        ema, start, losses = blob["ema"], blob["step"], blob["losses"]
        ground_losses, denoise_losses = blob["ground_losses"], blob["denoise_losses"]
        torch.set_rng_state(blob["torch_rng"])
        state.setdefault("diffusion_resumed_at", []).append(start)
        log(f"diffusion: resumed at step {start}")
    rng = np.random.default_rng([seed, start])
    sched = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items()
                             if k not in ("set_alpha_to_one", "steps_offset")})
    abar = sched.alphas_cumprod
    snr = abar / (1 - abar)
    weight_t = torch.clamp(snr, max=5.0) / snr  # min-SNR-5 weighting (epsilon prediction)
    steps, t0 = cfg["steps"], time.time()
    unet.train(), text.train()
    for step in range(start, steps):
        lr = cfg["lr"] * min(1.0, (step + 1) / cfg["warmup"]) * \
            (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.from_numpy(rng.integers(0, len(latents), cfg["batch"]))
        z0 = (latents[idx] + latent_std[idx] * torch.randn_like(latents[idx])) * scaling
        u = rng.random(cfg["batch"])
        which = np.where(u < cfg["cfg_dropout"], 2,
                         np.where(rng.random(cfg["batch"]) < PLAIN_SHARE, 0, 1))
        which = torch.from_numpy(which)
        tokens = ids[idx, which]
        t = torch.randint(0, 1000, (cfg["batch"],))
        noise = torch.randn_like(z0)
        a = abar[t].sqrt().view(-1, 1, 1, 1)
        s = (1 - abar[t]).sqrt().view(-1, 1, 1, 1)
        cond = text(tokens)[0]
        recorder.maps.clear()
        pred = unet(a * z0 + s * noise, t, cond).sample
        loss = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
        loss = (loss * weight_t[t]).mean()
        denoise_losses.append(loss.item())
        words = group_tokens[idx, which].float()
        valid = (words.sum(-1) > 0).float()
        valid[:, 0] *= (t <= grounding.QUALITY_MAX_T).float()
        ground = grounding.grounding_loss(recorder.maps, words, regions[idx].float(), valid)
        ground_losses.append(ground.item())
        loss = loss + cfg["grounding"] * ground
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg["ema"], (1 + step) / (10 + step))
        with torch.no_grad():
            current = dict(list(unet.state_dict().items())
                           + [("text." + k, v) for k, v in text.state_dict().items()])
            for k, v in ema.items():
                if v.dtype.is_floating_point:
                    v.mul_(decay).add_(current[k], alpha=1 - decay)
                else:
                    v.copy_(current[k])
        losses.append(loss.item())
        if step % 25 == 0 or step == steps - 1:
            log(f"diffusion step {step}/{steps} loss {np.mean(losses[-25:]):.4f} grounding "
                f"{np.mean(ground_losses[-25:]):.3f} lr {lr:.2e} ({time.time() - t0:.0f}s)")
        if (step + 1) % cfg["ckpt_every"] == 0 or step == steps - 1:
            tmp = ckpt / "diffusion.pt.tmp"
            torch.save(dict(unet=unet.state_dict(), text=text.state_dict(), opt=opt.state_dict(),
                            ema=ema, step=step + 1, losses=losses,
                            ground_losses=ground_losses, denoise_losses=denoise_losses,
                            identity=identity, torch_rng=torch.get_rng_state()),
                       tmp)
            tmp.replace(ckpt / "diffusion.pt")
    state["diffusion_seconds"] = state.get("diffusion_seconds", 0.0) + time.time() - t0
    state["diffusion_final_loss"] = float(np.mean(losses[-100:])) if losses else None
    state["grounding_final_loss"] = float(np.mean(ground_losses[-100:])) if ground_losses else None
    state["denoising_final_loss"] = float(np.mean(denoise_losses[-100:])) if denoise_losses else None
    state["diffusion_steps"] = steps
    from diffusers.models.attention_processor import AttnProcessor2_0
    unet.set_attn_processor(AttnProcessor2_0())
    unet.load_state_dict({k: v for k, v in ema.items() if not k.startswith("text.")})
    text.load_state_dict({k[5:]: v for k, v in ema.items() if k.startswith("text.")})
    return unet.eval(), text.eval()


def save_pipeline(vae, unet, text, out: Path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from lotts.offline_tokenizers import clip_tokenizer
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=clip_tokenizer(),
                                   unet=unet, scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
                                   safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.to(torch.float16)
    pipe.save_pretrained(out, safe_serialization=True)
    pipe.to(torch.float32)
    load_text_encoder_in_float32(Path(out) / "text_encoder")
    return pipe


def load_text_encoder_in_float32(folder: Path) -> None:
    """Weights stay float16 on disk (half the size; the upcast is exact), but transformers
    loads a model in the dtype its config names while diffusers loads the UNet and VAE in
    float32, so a plain ``from_pretrained`` mixed the two and failed on CPU. Naming float32 in
    the text encoder's config makes every component load in float32."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["dtype"] = "float32"
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


# ----- stage 3: verifiers --------------------------------------------------------------------
@torch.no_grad()
def vae_roundtrip(vae, images_uint8: np.ndarray, batch: int = 256) -> np.ndarray:
    out = []
    for start in range(0, len(images_uint8), batch):
        x = to_unit(images_uint8[start: start + batch])
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample
        out.append(((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def train_verifier(name, cfg, vae, out: Path, state: dict, scale: float):
    """A clean-vs-defective classifier on its own data stream; score = logit of clean."""
    t0 = time.time()
    seed = SEED + cfg["seed"]
    n = max(400, int(VERIFIER_DATA * scale))
    images, _, defective = make_examples(seed, n)
    rng = np.random.default_rng(seed)
    use_rt = rng.random(n) < cfg["roundtrip"]
    if use_rt.any():
        images[use_rt] = vae_roundtrip(vae, images[use_rt])
    held = max(200, n // 10)
    train_x, train_y = images[held:], defective[held:]
    test_x, test_y = images[:held], defective[:held]
    torch.manual_seed(seed)
    model = build_verifier(cfg["arch"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=1e-4)
    steps = max(20, int(cfg["steps"] * scale))
    model.train()
    for step in range(steps):
        lr = cfg["lr"] * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = rng.integers(0, len(train_x), cfg["batch"])
        x = images_to_tensor(train_x[idx])
        if cfg["arch"] == "b":  # its own augmentation: mild noise, brightness jitter
            x = x + 0.02 * torch.randn_like(x) + 0.05 * (torch.rand(len(x), 1, 1, 1) - 0.5)
        y = torch.from_numpy((~train_y[idx]).astype(np.float32))  # 1 = clean
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            log(f"{name} step {step}/{steps} loss {loss.item():.4f}")
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(images_to_tensor(test_x[i: i + 256]))
                            for i in range(0, len(test_x), 256)])
    acc = float(((logits > 0).numpy() == ~test_y).mean())
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(dict(
        arch=cfg["arch"], seed=seed, data_examples=n, vae_roundtrip_share=cfg["roundtrip"],
        steps=steps, heldout_accuracy=acc, score="logit that the image is clean (defect-free)"),
        indent=1))
    state[f"{name}_seconds"] = time.time() - t0
    state[f"{name}_heldout_accuracy"] = acc
    log(f"{name}: held-out accuracy {acc:.3f} ({time.time() - t0:.0f}s)")


def export_checkpoint(ckpt: Path, out: Path):
    """Save a pipeline from the (EMA) weights of an in-progress diffusion checkpoint."""
    from diffusers import AutoencoderKL
    vae = AutoencoderKL.from_pretrained(ckpt / "vae").eval()
    blob = torch.load(ckpt / "diffusion.pt", weights_only=False)
    unet, text = build_unet_and_text()
    ema = blob["ema"]
    unet.load_state_dict({k: v for k, v in ema.items() if not k.startswith("text.")})
    text.load_state_dict({k[5:]: v for k, v in ema.items() if k.startswith("text.")})
    save_pipeline(vae, unet.eval(), text.eval(), out)
    return blob["step"]


# ----- main ----------------------------------------------------------------------------------
def main(argv=None) -> int:
    """The command line; a cache or checkpoint it cannot use ends with one message, exit 2."""
    try:
        run_training(argv)
    except WorldTrainingError as error:
        print(f"lotts.world.train: error: {error}", file=sys.stderr)
        return 2
    return 0


def run_training(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ASSETS)
    parser.add_argument("--ckpt", type=Path, default=CKPT)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply step and data counts (e.g. 0.05 for a smoke run)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads; on a loaded machine 1 thread per process is faster")
    parser.add_argument("--fresh", action="store_true", help="ignore checkpoints of earlier runs")
    parser.add_argument("--stages", default="vae,diffusion,verifiers")
    parser.add_argument("--export-checkpoint", type=Path, default=None, metavar="DIR",
                        help="only save a pipeline from the current diffusion checkpoint to DIR")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.export_checkpoint is not None:
        step = export_checkpoint(args.ckpt, args.export_checkpoint)
        log(f"exported the step-{step} EMA weights to {args.export_checkpoint}")
        return
    if args.fresh and args.ckpt.exists():
        shutil.rmtree(args.ckpt)
    args.ckpt.mkdir(parents=True, exist_ok=True)
    stages = args.stages.split(",")
    state_file = args.ckpt / f"state_{'_'.join(stages)}.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    state.update(scale=args.scale, seed=SEED, threads=args.threads,
                 command=" ".join(["python -m lotts.world.train", *(argv or sys.argv[1:])]))
    save_state = lambda: state_file.write_text(json.dumps(state, indent=1))  # noqa: E731
    t_all = time.time()
    sc = lambda n: max(10, int(n * args.scale))  # noqa: E731

    images = None
    if "vae" in stages or "diffusion" in stages:
        t0 = time.time()
        n = sc(STAGES["data"]["num_examples"])
        images, captions, defective, scene_list, regions = make_examples(SEED, n, with_regions=True)
        state["data_seconds"] = time.time() - t0
        log(f"data: {n} examples, defect share {defective.mean():.3f} "
            f"({state['data_seconds']:.0f}s)")

    from diffusers import AutoencoderKL
    vae_dir = args.ckpt / "vae"
    if "vae" not in stages:  # another process trains it: wait
        while not (vae_dir / "DONE").exists():
            time.sleep(10)
    if (vae_dir / "DONE").exists():
        vae = AutoencoderKL.from_pretrained(vae_dir).eval()
        log("vae: loaded from checkpoint")
    else:
        cfg = dict(STAGES["vae"], steps=sc(STAGES["vae"]["steps"]))
        vae = train_vae(images, cfg, SEED + 1, vae_dir, state).eval()
        save_state()
    scaling = vae.config.scaling_factor

    if "diffusion" in stages:
        t0 = time.time()
        cache = args.ckpt / "latents.pt"
        if cache.exists():
            latents, latent_std = torch.load(cache)
            if len(latents) != len(images):
                raise WorldTrainingError(f"{cache} holds {len(latents)} latents for {len(images)} "
                                         "examples (another --scale?); use --fresh or another --ckpt")
        else:
            latents, latent_std = encode_all(vae, images)
            torch.save((latents, latent_std), cache)
        from lotts.offline_tokenizers import clip_tokenizer
        tok = clip_tokenizer()
        templated = [(scenes.LOW_QUALITY if d else scenes.HIGH_QUALITY).format(c)
                     for c, d in zip(captions, defective)]
        ids = torch.stack([tokenize(tok, captions), tokenize(tok, templated),
                           tokenize(tok, [""] * len(captions))], dim=1)
        group_tokens = grounding.GroupTokens(tok, ids.shape[-1]).table(
            list(zip(captions, templated)), scene_list)
        state["encode_seconds"] = time.time() - t0
        log(f"latents {tuple(latents.shape)} std {float(latents.std() * scaling):.3f} "
            f"({state['encode_seconds']:.0f}s)")
        cfg = dict(STAGES["diffusion"], steps=sc(STAGES["diffusion"]["steps"]))
        unet, text = train_diffusion(latents, latent_std, ids, group_tokens,
                                     torch.from_numpy(regions), cfg, SEED + 2, scaling,
                                     args.ckpt, state)
        save_pipeline(vae, unet, text, args.out / "pipeline")
        save_state()
        log(f"pipeline saved to {args.out / 'pipeline'}")

    if "verifiers" in stages:
        for name in ("verifier_a", "verifier_b"):
            if (args.out / name / "model.safetensors").exists() and f"{name}_seconds" in state:
                continue
            train_verifier(name, STAGES[name], vae, args.out / name, state, args.scale)
            save_state()

    state["process_seconds"] = time.time() - t_all
    save_state()
    merged = {}
    for f in sorted(args.ckpt.glob("state_*.json")):
        merged[f.stem[len("state_"):]] = json.loads(f.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_log.json").write_text(json.dumps(merged, indent=1))
    log("done", json.dumps(state))


if __name__ == "__main__":
    raise SystemExit(main())
