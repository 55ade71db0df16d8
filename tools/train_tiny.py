#!/usr/bin/env python3
"""Train the built-in ``tiny`` (UNet) or ``tiny-pixart`` (transformer) model from procedurally
generated shapes scenes.

    python tools/train_tiny.py --out runs/train-tiny --device cuda [--install]
    python tools/train_tiny.py --out /tmp/t --device cpu --vae-steps 3 --unet-steps 3 \
        --batch 8 --vae-batch 4 --eval-count 0          # a smoke test
    python tools/train_tiny.py --denoiser pixart --out runs/train-tiny-pixart --device cuda \
        --sizes 64,96,128,160,192 --size-weights 2,2,2,1,1 [--install]

Two stages, one seed (``--seed``) fixing everything (initial weights, scenes, captions, noise):

1. the VAE (``AutoencoderKL``, 8 pixels per latent element) on rendered scenes: L1 + MSE
   reconstruction plus a small KL term; then the latent scaling factor = 1 / std of the latents;
2. the UNet and the text encoder together on the frozen VAE's latents: epsilon prediction
   with the Stable Diffusion noise schedule, min-SNR-5 loss weights, offset noise 0.1, captions
   with the size word dropped 30% / the background 10% of the time, 10% empty captions (for
   classifier-free guidance) and 5% with an unknown word inserted; EMA of the weights.

``--denoiser pixart`` skips stage 1: it takes the VAE (frozen, with the scaling factor in the
file's metadata) and the text encoder (frozen: the transformer learns to read the embeddings
the ``tiny`` UNet was trained with) from ``--init-from`` (the committed ``tiny`` weights), and
trains a ``PixArtTransformer2DModel`` (:mod:`pcpp_mpi.models.tiny_pixart`) with the same stage-2
loop (``--unet-steps``/``--denoiser-steps``, ``--time-limit-unet``/``--time-limit-denoiser``).

Each step draws a batch of new scenes at one image size from ``--sizes`` (weighted by
``--size-weights``; the batch shrinks with the square of the size so each step sees about the
same number of pixels). The learning rate warms up, then stays constant, so a run stopped by
a time limit (``--time-limit-*``) after ``k`` steps equals a run with ``--*-steps k``; the log
says how many steps were done. Results are bitwise reproducible for the same seed, steps,
hardware and software.

Writes into ``--out``: ``tiny.safetensors`` or ``tiny-pixart.safetensors`` (the weights,
float16, with metadata), ``train.log``, ``vae.png`` (scenes over their reconstructions; UNet
only), and with ``--eval-count > 0`` ``eval.json`` (caption-checker accuracy at each
``--eval-sizes``) and ``samples-<size>.png``. ``--install`` also copies the weights into
``pcpp_mpi/models/weights/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pcpp_mpi.models.bundle import ModelBundle, default_scheduler_config  # noqa: E402
from pcpp_mpi.models.tiny import (  # noqa: E402
    INIT_SEED,
    WEIGHTS_PATH,
    TinyPromptEncoder,
    build_tiny_modules,
    load_tiny_modules,
    save_tiny_weights,
    tiny_vae_scale_factor,
)
from pcpp_mpi.models.tiny_pixart import (  # noqa: E402
    WEIGHTS_PATH as PIXART_WEIGHTS_PATH,
)
from pcpp_mpi.models.tiny_pixart import (  # noqa: E402
    build_tiny_pixart_modules,
    load_tiny_pixart_modules,
    save_tiny_pixart_weights,
    tiny_pixart_bundle,
    tiny_pixart_transformer_config,
)
from pcpp_mpi.models.tiny_text import SEQ_LEN, WordTokenizer  # noqa: E402
from pcpp_mpi.models.tiny_vocab import UNKNOWN_BUCKETS  # noqa: E402
from pcpp_mpi.shapes.checker import accuracy, check_caption  # noqa: E402
from pcpp_mpi.shapes.render import render_scenes, to_uint8  # noqa: E402
from pcpp_mpi.shapes.sampling import generate, image_grid, noise_prediction  # noqa: E402
from pcpp_mpi.shapes.scenes import evaluation_prompts, sample_scenes  # noqa: E402
from pcpp_mpi.shapes.training_tokens import training_token_ids  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument(
        "--denoiser",
        choices=("unet", "pixart"),
        default="unet",
        help="unet: the tiny model (VAE stage, then UNet + text encoder); pixart: the "
        "tiny-pixart transformer on --init-from's frozen VAE and text encoder",
    )
    p.add_argument(
        "--init-from",
        type=Path,
        default=WEIGHTS_PATH,
        help="pixart: the tiny weights file whose VAE, scaling factor and text encoder to use",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--sizes", default="64,96,128", help="training heights and widths (px)")
    p.add_argument("--size-weights", default="2,1,1", help="how often each size is drawn")
    p.add_argument("--vae-steps", type=int, default=4000)
    p.add_argument("--vae-batch", type=int, default=64, help="VAE batch at 64 px")
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--kl-weight", type=float, default=1e-5)
    p.add_argument("--unet-steps", "--denoiser-steps", dest="unet_steps", type=int, default=12000)
    p.add_argument("--batch", type=int, default=512, help="denoiser batch at 64 px")
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--warmup", type=int, default=200, help="learning-rate warm-up steps")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--offset-noise", type=float, default=0.1)
    p.add_argument("--min-snr", type=float, default=5.0)
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--unknown-word", type=float, default=0.05)
    p.add_argument("--time-limit-vae", type=float, default=0.0, help="seconds (0: none)")
    p.add_argument(
        "--time-limit-unet",
        "--time-limit-denoiser",
        dest="time_limit_unet",
        type=float,
        default=0.0,
        help="seconds (0: none)",
    )
    p.add_argument("--measure-count", type=int, default=512, help="images for the VAE scale")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--eval-count", type=int, default=36, help="prompts checked after training")
    p.add_argument("--eval-sizes", default="64,256")
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--install", action="store_true", help="copy the weights into the package")
    p.add_argument(
        "--resume",
        type=Path,
        help="continue from a weights file of --denoiser's model: keep its VAE and scaling "
        "factor (no VAE stage), go on training its denoiser (and the UNet's text encoder) "
        "(fresh optimizer and warm-up)",
    )
    p.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="deterministic kernels where torch has them (--no-deterministic: cuDNN autotuning)",
    )
    return p.parse_args(argv)


class Log:
    def __init__(self, path: Path) -> None:
        self.file = path.open("a", encoding="utf-8")
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        line = f"[{time.perf_counter() - self.start:8.1f}s] {message}"
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_name() -> str:
    """The CPU's model name and core count (``platform.processor()`` is empty on Linux)."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores"


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


class SizeSchedule:
    """Which image height, width (drawn independently) and batch each step uses."""

    def __init__(
        self, sizes: list[int], weights: list[float], batch_at_64: int, factor: int
    ) -> None:
        """``factor``: pixels every size must be a multiple of (the denoiser's band unit)."""
        for size in sizes:
            if size % factor:
                raise SystemExit(f"--sizes: {size} is not a multiple of {factor}")
        if len(weights) != len(sizes):
            raise SystemExit("--size-weights needs one weight per size")
        self.sizes = sizes
        self.weights = [float(w) for w in weights]
        self.p = np.asarray(self.weights) / sum(self.weights)
        self.batch_at_64 = batch_at_64
        self.factor = factor

    def with_batch(self, batch_at_64: int) -> SizeSchedule:
        return SizeSchedule(self.sizes, self.weights, batch_at_64, self.factor)

    def draw(self, rng: np.random.Generator) -> tuple[int, int, int]:
        height, width = (int(v) for v in rng.choice(self.sizes, size=2, p=self.p))
        batch = max(2, round(self.batch_at_64 * 64 * 64 / (height * width)))
        return height, width, batch


def lr_at(step: int, base: float, warmup: int) -> float:
    return base * min(1.0, (step + 1) / max(1, warmup))


def train_vae(args, vae, schedule, rng, gen, device, log) -> int:
    """Train the VAE; leaves the EMA of its weights in ``vae`` (eval mode, frozen)."""
    vae.train().requires_grad_(True)
    params = list(vae.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=args.vae_lr, betas=(0.9, 0.99), weight_decay=0)
    start, done = time.perf_counter(), 0
    sizes = schedule.with_batch(args.vae_batch)
    total = torch.zeros((), device=device)
    for step in range(args.vae_steps):
        if args.time_limit_vae and time.perf_counter() - start > args.time_limit_vae:
            log(f"vae: time limit reached after {step} steps (reproduce: --vae-steps {step})")
            break
        height, width, batch = sizes.draw(rng)
        images = render_scenes(sample_scenes(batch, rng), height, width, device)
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        kl = posterior.kl().mean() / images[0].numel()
        loss = F.l1_loss(recon, images) + F.mse_loss(recon, images) + args.kl_weight * kl
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.vae_lr, args.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - ema_decay(args, step))
        total += loss.detach()
        done = step + 1
        if done % args.log_every == 0 or done == args.vae_steps:
            rate = done / (time.perf_counter() - start)
            mean = total.item() / (done - (done - 1) // args.log_every * args.log_every)
            total.zero_()
            log(
                f"vae step {done:6d} {height}x{width} loss {mean:.4f} kl {kl.item():.2f} "
                f"{rate:.1f} it/s"
            )
    with torch.no_grad():
        for p, e in zip(params, ema, strict=True):
            p.copy_(e)
    vae.eval().requires_grad_(False)
    log(f"vae: {done} steps in {time.perf_counter() - start:.0f}s")
    return done


def ema_decay(args, step: int) -> float:
    return min(args.ema, (1 + step) / (10 + step))


@torch.no_grad()
def measure_vae(vae, count, rng, gen, device, out: Path, log) -> float:
    """Latent scaling factor (1 / std of ``count`` images' latents at 64 px) and the
    reconstruction PSNR at 64 and 256 px; writes vae.png."""
    latents = []
    for begin in range(0, count, 64):
        images = render_scenes(sample_scenes(min(64, count - begin), rng), 64, 64, device)
        latents.append(vae.encode(images).latent_dist.sample(generator=gen).flatten())
    std = torch.cat(latents).float().std().item()
    rows = []
    preview = max(1, min(8, count // 8))
    for size in (64, 256):
        images = render_scenes(sample_scenes(preview, rng), size, size, device)
        recon = vae.decode(vae.encode(images).latent_dist.mode()).sample.clamp(-1, 1)
        mse = F.mse_loss(recon, images).item()
        psnr = 10 * math.log10(4 / max(mse, 1e-12))
        log(f"vae reconstruction at {size} px: PSNR {psnr:.1f} dB")
        pair = np.concatenate(
            [image_grid(to_uint8(images), preview), image_grid(to_uint8(recon), preview)]
        )
        if size == 64:
            pair = pair.repeat(4, axis=0).repeat(4, axis=1)
        rows.append(pair)
    save_png(out / "vae.png", np.concatenate(rows))
    log(f"vae latent std {std:.4f} -> scaling factor {1 / std:.5f}")
    return 1.0 / std


def insert_unknown(ids: torch.Tensor, chance: float, rng: np.random.Generator, base: int) -> None:
    """Insert one random unknown-word token into a fraction ``chance`` of the rows (in place)."""
    for row in np.nonzero(rng.random(len(ids)) < chance)[0]:
        words = [int(t) for t in ids[row] if int(t) != 0]
        position = int(rng.integers(0, len(words) + 1))
        words.insert(position, base + int(rng.integers(0, UNKNOWN_BUCKETS)))
        words = words[:SEQ_LEN]
        ids[row] = torch.tensor(words + [0] * (SEQ_LEN - len(words)))


def train_denoiser(
    args, denoiser, text_encoder, train_text, vae, scale, schedule, rng, gen, device, log
):
    """Train the denoiser, UNet or PixArt transformer (and the text encoder if
    ``train_text``); leaves the EMA of the trained weights in the modules (eval mode, frozen)
    and returns the steps done."""
    from diffusers import DDPMScheduler

    stage = args.denoiser

    tokenizer = WordTokenizer()
    noise_schedule = DDPMScheduler.from_config(default_scheduler_config())
    alphas = noise_schedule.alphas_cumprod.to(device=device, dtype=torch.float32)
    snr = alphas / (1 - alphas)
    modules = (denoiser, text_encoder) if train_text else (denoiser,)
    if not train_text:
        text_encoder.eval().requires_grad_(False)
    params = [p for m in modules for p in m.parameters()]
    for m in modules:
        m.train().requires_grad_(True)
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    start, done = time.perf_counter(), 0
    total = torch.zeros((), device=device)
    for step in range(args.unet_steps):
        if args.time_limit_unet and time.perf_counter() - start > args.time_limit_unet:
            log(f"{stage}: time limit reached after {step} steps (reproduce: --unet-steps {step})")
            break
        height, width, batch = schedule.draw(rng)
        scenes = sample_scenes(batch, rng)
        # = tokenizer(training_captions(scenes, rng, drop_all=...)), without the strings
        ids = training_token_ids(scenes, rng, tokenizer, drop_all=args.caption_dropout)
        insert_unknown(ids, args.unknown_word, rng, tokenizer.unknown_base)
        with torch.no_grad():
            images = render_scenes(scenes, height, width, device)
            latents = vae.encode(images).latent_dist.sample(generator=gen) * scale
        noise = torch.randn(latents.shape, generator=gen, device=device)
        if args.offset_noise:
            shape = (*latents.shape[:2], 1, 1)
            noise = noise + args.offset_noise * torch.randn(shape, generator=gen, device=device)
        t = torch.randint(0, len(alphas), (batch,), generator=gen, device=device)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        with torch.set_grad_enabled(train_text):
            hidden = text_encoder(ids.to(device))
        prediction = noise_prediction(denoiser, noisy, t, hidden)
        per_sample = (prediction.float() - noise).pow(2).mean(dim=(1, 2, 3))
        weight = snr[t].clamp(max=args.min_snr) / snr[t] if args.min_snr else 1.0
        loss = (weight * per_sample).mean()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.lr, args.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - ema_decay(args, step))
        total += loss.detach()
        done = step + 1
        if done % args.log_every == 0 or done == args.unet_steps:
            rate = done / (time.perf_counter() - start)
            mean = total.item() / (done - (done - 1) // args.log_every * args.log_every)
            total.zero_()
            log(
                f"{stage} step {done:6d} {height}x{width} batch {batch:4d} loss {mean:.4f} "
                f"{rate:.1f} it/s"
            )
    for m in modules:
        m.eval().requires_grad_(False)
    with torch.no_grad():
        for p, e in zip(params, ema, strict=True):
            p.copy_(e)
    log(f"{stage}: {done} steps in {time.perf_counter() - start:.0f}s")
    return done


def repo_path(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (for metadata)."""
    resolved = path.resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(path)


#: what ``--denoiser pixart`` records about the tiny weights file it starts from
ORIGIN_KEYS = ("format", "vae_steps_done", "unet_steps_done", "vae_scaling_factor", "torch")


def save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(image).save(path)


def evaluate(args, bundle: ModelBundle, out: Path, log) -> dict:
    prompts = evaluation_prompts(args.eval_count)
    seeds = list(range(len(prompts)))
    results = {}
    for size in int_list(args.eval_sizes):
        t0 = time.perf_counter()
        try:
            images = generate(bundle, prompts, seeds, size, size, steps=args.eval_steps)
        except Exception as exc:  # keep the weights and the other sizes' results
            log(f"eval {size} px failed: {exc!r}")
            continue
        checks = [check_caption(im, p) for im, p in zip(images, prompts, strict=True)]
        acc = accuracy(checks)
        results[str(size)] = {**acc.as_dict(), "checks": [c.as_dict() for c in checks]}
        log(
            f"eval {size} px ({len(prompts)} prompts, {args.eval_steps} DDIM steps, CFG 5): "
            f"colour+position {acc.both:.3f}, colour {acc.colour:.3f}, "
            f"position {acc.position:.3f}, kind {acc.kind:.3f} "
            f"({time.perf_counter() - t0:.0f}s)"
        )
        columns = 6 if size >= 128 else 12
        grid = image_grid(images[:12] if size >= 256 else images, columns)
        save_png(out / f"samples-{size}.png", grid)
    (out / "eval.json").write_text(json.dumps(results, indent=1, default=str))
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "train.log")
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    log(f"train_tiny: {' '.join(sys.argv[1:] if argv is None else argv)}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    log(f"device {device} ({name}), torch {torch.__version__}, python {platform.python_version()}")

    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    pixart = args.denoiser == "pixart"
    # a size must be whole bands: 3 UNet levels, or one patch, below the 8x VAE
    factor = tiny_vae_scale_factor() * (
        tiny_pixart_transformer_config()["patch_size"] if pixart else 4
    )
    schedule = SizeSchedule(int_list(args.sizes), int_list(args.size_weights), args.batch, factor)

    parent: dict[str, str] = {}
    origin: dict[str, str] = {}
    if args.resume is not None:
        load = load_tiny_pixart_modules if pixart else load_tiny_modules
        denoiser, vae, text_encoder, parent = load(args.resume)
        scale = float(parent["vae_scaling_factor"])
        done_before = parent.get("transformer_steps_done" if pixart else "unet_steps_done", "?")
        log(f"resuming from {args.resume} ({done_before} {args.denoiser} steps)")
    elif pixart:
        denoiser, _, _ = build_tiny_pixart_modules(1.0, init_seed=INIT_SEED + args.seed)
        _, vae, text_encoder, origin = load_tiny_modules(args.init_from)
        scale = float(origin["vae_scaling_factor"])
        log(f"VAE (scaling factor {scale:.5f}) and text encoder from {args.init_from}, frozen")
    else:
        denoiser, vae, text_encoder = build_tiny_modules(
            scaling_factor=1.0, init_seed=INIT_SEED + args.seed
        )
    for module in (denoiser, vae, text_encoder):
        module.to(device)
    parts = (("transformer" if pixart else "unet", denoiser), ("vae", vae))
    n_params = {
        part: sum(p.numel() for p in m.parameters())
        for part, m in (*parts, ("text_encoder", text_encoder))
    }
    log(f"parameters: {n_params}")

    if args.resume is None and not pixart:
        vae_steps = train_vae(args, vae, schedule, rng, gen, device, log)
        scale = measure_vae(vae, args.measure_count, rng, gen, device, out, log)
        vae.register_to_config(scaling_factor=scale)
    else:
        vae_steps = 0
    steps = train_denoiser(
        args, denoiser, text_encoder, not pixart, vae, scale, schedule, rng, gen, device, log
    )

    metadata = {
        "trained_with": "tools/train_tiny.py",
        "command": " ".join(sys.argv if argv is None else ["tools/train_tiny.py", *argv]),
        "train_args": json.dumps({k: str(v) for k, v in vars(args).items()}, sort_keys=True),
        "vae_steps_done": str(vae_steps),
        "resumed_from": json.dumps(parent, sort_keys=True) if parent else "",
        "torch": torch.__version__,
        "device": name,
    }
    if pixart:
        metadata["transformer_steps_done"] = str(steps)
        metadata["text_encoder"] = "frozen"
        metadata["initialised_from"] = json.dumps(
            {"path": repo_path(args.init_from), **{k: origin.get(k, "") for k in ORIGIN_KEYS}},
            sort_keys=True,
        )
    else:
        metadata["unet_steps_done"] = str(steps)
    save = save_tiny_pixart_weights if pixart else save_tiny_weights
    path = out / ("tiny-pixart.safetensors" if pixart else "tiny.safetensors")
    save(path, denoiser, vae, text_encoder, scale, metadata)
    log(f"weights written: {path} ({path.stat().st_size / 1e6:.2f} MB)")

    if args.eval_count > 0:
        # Evaluate the weights as they are shipped (rounded to float16), then record the
        # accuracy in the file (re-saving float16 weights read as float32 is lossless).
        if pixart:
            denoiser, vae, text_encoder, _ = load_tiny_pixart_modules(path)
            bundle = tiny_pixart_bundle(denoiser.to(device), vae.to(device), text_encoder)
        else:
            denoiser, vae, text_encoder, _ = load_tiny_modules(path)
            bundle = ModelBundle(
                denoiser=denoiser.to(device),
                vae=vae.to(device),
                encoder=TinyPromptEncoder(WordTokenizer(), text_encoder),
                scheduler_config=default_scheduler_config(),
                vae_scale_factor=tiny_vae_scale_factor(),
            )
        results = evaluate(args, bundle, out, log)
        metadata["caption_accuracy"] = json.dumps(
            {
                "prompts": args.eval_count,
                "ddim_steps": args.eval_steps,
                **{
                    size: {k: v for k, v in r.items() if k != "checks"}
                    for size, r in results.items()
                },
            },
            sort_keys=True,
        )
        save(path, denoiser.cpu(), vae.cpu(), text_encoder, scale, metadata)
    if args.install:
        target = PIXART_WEIGHTS_PATH if pixart else WEIGHTS_PATH
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        target.chmod(0o644)
        log(f"installed as {target}")
    log("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
