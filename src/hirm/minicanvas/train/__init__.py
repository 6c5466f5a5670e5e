"""Resumable training of the MiniCanvas models (CPU-friendly, seeded, safetensors only): `loop.py` is what every
trainer shares (checkpoints, schedule, EMA, resuming, time budget), then one module per model. Each `train_*`
function trains one model for a number of steps, checkpointing to `run_dir` every `save_every` steps so that a
killed run resumes where it stopped; `hirm minicanvas train WHAT` runs them through `TRAINERS`."""

from __future__ import annotations

from pathlib import Path

from hirm.minicanvas.train.classifier import train_classifier
from hirm.minicanvas.train.flux import export_flux_resume_state, prepare_flux_data, train_flux
from hirm.minicanvas.train.loop import RunState, load_checkpoint, run_loop, save_checkpoint
from hirm.minicanvas.train.text import train_text_encoder
from hirm.minicanvas.train.unet import export_unet_resume_state, prepare_generator_data, train_unet
from hirm.minicanvas.train.vae import train_vae, train_vae_decoder
from hirm.registry import Entry, Registry

# where a checkout keeps each generator's committed resume state (raw weights + counters), relative to its root:
# training goes on across machines from there (`hirm minicanvas train/build --resume-state`); an installed
# package has no such folder, so the library functions take the path and default to none
RESUME_STATE = {"unet": Path("training/minicanvas-sd-unet"), "flux": Path("training/minicanvas-flux")}

# what `hirm minicanvas train WHAT` runs; a trainer's options are its keyword arguments
TRAINERS: Registry[Entry] = Registry("trainer", [
    Entry("classifier", None, train_classifier, "the judge: object and style heads on rendered images"),
    Entry("vae", None, train_vae, "mini-SD's AutoencoderKL on rendered images"),
    Entry("vae-decoder", None, train_vae_decoder, "the VAE's decoder alone (its latent space kept)"),
    Entry("text", None, train_text_encoder, "the CLIPTextModel, trained contrastively against the frozen judge (LiT)"),
    Entry("unet", None, train_unet, "mini-SD's UNet2DConditionModel on 8x8 VAE latents"),
    Entry("flux", None, train_flux, "mini-Flux: FluxTransformer2DModel + T5, rectified flow"),
])


__all__ = ["RESUME_STATE", "TRAINERS", "RunState", "export_flux_resume_state", "export_unet_resume_state",
           "load_checkpoint", "prepare_flux_data", "prepare_generator_data", "run_loop", "save_checkpoint",
           "train_classifier", "train_flux", "train_text_encoder", "train_unet", "train_vae", "train_vae_decoder"]
