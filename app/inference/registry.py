"""The model registry: every model under the models folder, checked and loaded once at start-up.

For each ``<modality>/<model>/card.json`` the registry validates the card, checks that the card
sits in its modality's folder, hashes ``model.onnx`` against ``card.sha256`` and builds one ONNX
Runtime session from the very bytes it hashed (and, for the CPU lanes, a second one on one
thread). A model failing any check is not served; it is
listed with the reason (``/v1/models``, ``/readyz``) instead of stopping the service.

Execution providers are requested in the order TensorRT, CUDA, CPU. ONNX Runtime silently falls
back to the next one when a provider cannot start (missing CUDA libraries, for instance), so the
provider each session really got is read back from ``session.get_providers()`` and logged.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pydantic import ValidationError

from app.allocator import return_freed_memory
from app.errors import ModelNotFound, ModelUnavailable
from app.inference.card import CARD_FILENAME, ModelCard, read_card
from app.inference.plan import tensorrt_profile, tile_plan
from app.inference.remote import (
    BackendRefusedKey,
    RemoteBackend,
    TensorNames,
    check_metadata,
)
from app.inference.working_memory import (
    ASSUMED,
    REMOTE,
    CallMemory,
    measure,
    probe_side,
)
from app.modality import Modality
from app.settings import PROVIDER_ORDER, ProviderName, Settings

logger = logging.getLogger(__name__)

ORT_PROVIDERS: dict[ProviderName, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_GPU_PROVIDERS = {"tensorrt", "cuda"}
GPU_EXECUTION_PROVIDERS = frozenset(ORT_PROVIDERS[name] for name in ("tensorrt", "cuda"))


def provider_options(
    providers: tuple[str, ...], settings: Settings, trt_profile: dict[str, str] | None = None
) -> list[dict[str, str]]:
    """Each requested provider's options, in the same order (ONNX Runtime takes them as a list
    beside the names). ``trt_profile``: TensorRT's explicit min / opt / max input shapes
    (``app/inference/plan.tensorrt_profile``). Pure: the GPU configuration is tested on any machine."""
    options: list[dict[str, str]] = []
    for provider in providers:
        if provider == ORT_PROVIDERS["tensorrt"]:
            trt = {"trt_fp16_enable": str(settings.trt_fp16).lower()} | (trt_profile or {})
            if settings.trt_cache_dir is not None:
                cache = str(settings.trt_cache_dir)
                trt |= {"trt_engine_cache_enable": "true", "trt_engine_cache_path": cache,
                        "trt_timing_cache_enable": "true", "trt_timing_cache_path": cache}
            options.append(trt)
        elif provider == ORT_PROVIDERS["cuda"]:
            options.append({"cudnn_conv_algo_search": settings.cudnn_conv_algo_search})
        else:
            options.append({})
    return options


@dataclass(frozen=True)
class LoadedModel:
    card: ModelCard
    session: ort.InferenceSession | None  # None for a model served by the remote backend
    providers: tuple[str, ...]  # as the session reports them, the one used first
    path: Path
    # The same model on one CPU thread, for the CPU lanes (app/inference/lanes.py); None on a GPU
    # or with the lanes off.
    one_thread_session: ort.InferenceSession | None = None
    # Working memory of one model call, measured at start-up (app/inference/working_memory.py).
    call_memory: CallMemory = ASSUMED
    # The Open Inference Protocol server that runs this model (DENOISE_INFERENCE_URL), or None.
    remote: RemoteBackend | None = None

    @property
    def execution_provider(self) -> str:
        return self.providers[0]


@dataclass(frozen=True)
class UnservedModel:
    path: str  # relative to the models folder
    reason: str
    model_id: str | None = None


@dataclass
class ModelRegistry:
    models_dir: Path
    requested_providers: tuple[str, ...]
    models: dict[str, LoadedModel] = field(default_factory=dict)
    unserved: list[UnservedModel] = field(default_factory=list)
    # Models refused because their session did not get DENOISE_REQUIRE_PROVIDER: not ready.
    missing_provider: list[str] = field(default_factory=list)
    # DENOISE_INFERENCE_URL's backend, which every served model's calls go to; None: local sessions.
    remote: RemoteBackend | None = None
    # Card folders of remote models whose backend did not answer at start-up (``load_pending``).
    pending: list[Path] = field(default_factory=list)

    def modalities(self) -> list[str]:
        return sorted({m.card.modality for m in self.models.values()})

    def failed_for(self, modality: str) -> bool:
        """Whether a model for ``modality`` was found but not served (its folder is <modality>/...)."""
        return any(Path(u.path).parts[:1] == (modality,) for u in self.unserved)

    def resolve(self, modality: Modality, name: str | None) -> LoadedModel:
        """The model for ``modality`` named by id or architecture, or the modality's default."""
        candidates = [m for m in self.models.values() if m.card.modality == modality]
        if name is None:
            return self._default(modality, candidates)
        for model in candidates:
            if name == model.card.id:
                return model
        # An architecture can name a family (a U-Net in fp32 and in int8): the modality's default
        # first, then full precision, whatever order the folders were read in.
        family = [m for m in candidates if m.card.architecture == name]
        if family:
            return min(family, key=lambda m: (not m.card.default, m.card.precision != "fp32", m.card.id))
        other = self.models.get(name)
        if other is not None:
            raise ModelNotFound(
                f"Model '{name}' denoises {other.card.modality}, not {modality}; choose one of "
                f"{_names(candidates)} or leave 'model' out."
            )
        unserved = next((u for u in self.unserved if u.model_id == name), None)
        if unserved is not None:
            raise ModelUnavailable(f"Model '{name}' is not being served: {unserved.reason}.")
        raise ModelNotFound(
            f"No model '{name}' for {modality}; choose one of {_names(candidates)} (id or "
            "architecture) or leave 'model' out for the default."
        )

    def _default(self, modality: Modality, candidates: list[LoadedModel]) -> LoadedModel:
        if not candidates:
            served = ", ".join(self.modalities()) or "none"
            raise ModelUnavailable(
                f"No model for {modality} is loaded (modalities served: {served}); see /v1/models."
            )
        defaults = [m for m in candidates if m.card.default]
        if defaults:
            return defaults[0]
        if len(candidates) == 1:
            return candidates[0]
        raise ModelNotFound(f"No default model is marked for {modality}; name one of {_names(candidates)}.")


def _names(models: list[LoadedModel]) -> str:
    return ", ".join(sorted(m.card.id for m in models)) or "(none loaded)"


def select_providers(settings: Settings) -> tuple[str, ...]:
    """ORT provider names to request, in priority order, warning about GPUs that are missing."""
    available = set(ort.get_available_providers())
    requested = settings.requested_providers()
    if requested is None:  # auto: everything this build has, fastest first
        chosen = tuple(ORT_PROVIDERS[n] for n in PROVIDER_ORDER if ORT_PROVIDERS[n] in available)
        logger.info("execution providers (auto): %s", ", ".join(chosen))
        return chosen
    chosen = []
    for name in requested:
        provider = ORT_PROVIDERS[name]
        if provider in available:
            chosen.append(provider)
        elif name in _GPU_PROVIDERS:
            logger.warning(
                "!!! GPU execution provider %s was requested but this onnxruntime build does not "
                "offer it (available: %s). Install the GPU runtime (pip install -e '.[gpu]', "
                "without the CPU wheel) or drop it from DENOISE_PROVIDERS. !!!",
                provider,
                ", ".join(sorted(available)),
            )
    if not chosen:
        logger.warning("!!! none of the requested providers is available; falling back to CPU !!!")
        chosen.append(ORT_PROVIDERS["cpu"])
    return tuple(chosen)


def session_options(settings: Settings, threads: int | None = None) -> ort.SessionOptions:
    """The service's session options, on ``threads`` intra-op threads (default: the setting)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = settings.ort_memory_arena
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.ort_spinning else "0")
    options.add_session_config_entry("session.force_spinning_stop", "1" if settings.ort_spin_stop_after_run else "0")
    options.log_severity_level = 3  # ORT's own warnings would repeat what we log below
    return options


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Refused(Exception):
    """A model that will not be served, with the reason (and its id once the card is read)."""

    def __init__(self, reason: str, model_id: str | None = None) -> None:
        super().__init__(reason)
        self.model_id = model_id


class _Unreachable(_Refused):
    """A remote model whose backend could not be asked about it: served once it can."""


def _check_card(card: ModelCard, card_dir: Path, models_dir: Path) -> None:
    folder = (card_dir.relative_to(models_dir).parts or ("the models folder itself",))[0]
    if folder != card.modality:
        raise _Refused(f"card says modality {card.modality} but it sits under {folder}/")
    if card.output.channels != 1:
        raise _Refused("only single-channel outputs are supported")
    expected = 1 if card.noise_map is None else 2
    if card.input.channels != expected:
        what = "the image and its noise map" if card.noise_map else "the image"
        raise _Refused(f"the input has {card.input.channels} channels; this card's model takes {expected} ({what})")
    if card.noise_map is not None and card.noise_map.channel != 1:
        raise _Refused("the noise map must be input channel 1")


def _check_session(card: ModelCard, session: ort.InferenceSession) -> None:
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != [card.input.name]:
        raise _Refused(f"ONNX inputs {inputs} differ from the card's input '{card.input.name}'")
    shape = session.get_inputs()[0].shape
    if len(shape) == 4 and isinstance(shape[1], int) and shape[1] != card.input.channels:
        raise _Refused(f"the ONNX input has {shape[1]} channels, the card says {card.input.channels}")
    if card.output.name not in outputs:
        raise _Refused(f"ONNX outputs {outputs} lack the card's output '{card.output.name}'")


def _load_one(
    card_dir: Path,
    settings: Settings,
    providers: tuple[str, ...],
    options: ort.SessionOptions,
    remote: RemoteBackend | None = None,
) -> LoadedModel:
    card = read_card(card_dir)
    try:
        if remote is not None:
            return _build_remote(card, card_dir, settings, remote)
        return _build(card, card_dir, settings, providers, options)
    except _Refused as refused:  # the same kind of refusal, now naming the model
        raise type(refused)(str(refused), card.id) from refused.__cause__


def _build(
    card: ModelCard,
    card_dir: Path,
    settings: Settings,
    providers: tuple[str, ...],
    options: ort.SessionOptions,
) -> LoadedModel:
    _check_card(card, card_dir, settings.models_dir)
    model_path = card_dir / card.file
    if not model_path.is_file():
        raise _Refused(f"{card.file} is missing")
    data = model_path.read_bytes()
    digest = sha256_hex(data)
    if digest != card.sha256.lower():
        raise _Refused(f"checksum mismatch: {card.file} has sha256 {digest}, the card says {card.sha256}")
    # Shaped for the GPU (tile buckets) where TensorRT is asked for; read back below if it was not got.
    profile = tensorrt_profile(card, tile_plan(card, settings, on_gpu=True), settings)
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=list(providers),
                                       provider_options=provider_options(providers, settings, profile))
    except Exception as error:  # ORT raises its own types; the model is refused, not the service
        raise _Refused(f"ONNX Runtime could not load it ({type(error).__name__})") from error
    _check_session(card, session)
    providers_used = tuple(session.get_providers())
    one_thread = None
    if providers_used[0] == ORT_PROVIDERS["cpu"] and uses_cpu_lanes(settings):
        try:
            one_thread = ort.InferenceSession(
                data, sess_options=session_options(settings, threads=1), providers=[ORT_PROVIDERS["cpu"]]
            )
        except Exception as error:  # served as before, on every core only
            logger.warning("model %s: no one-thread session for the CPU lanes (%s)", card.id, type(error).__name__)
    return LoadedModel(
        card=card, session=session, providers=providers_used, path=model_path, one_thread_session=one_thread
    )


REMOTE_PROVIDER = "remote"  # what /v1/models and X-Execution-Provider say for a remote model


def _build_remote(card: ModelCard, card_dir: Path, settings: Settings, remote: RemoteBackend) -> LoadedModel:
    """A model the backend runs: the card is checked as for a local one, then the backend's
    metadata against it (model, version, tensor names and shapes); no session is made here, and
    the ONNX file need not be present (its bytes are the backend's)."""
    _check_card(card, card_dir, settings.models_dir)
    try:
        metadata = remote.metadata(card.id)
    except BackendRefusedKey as error:
        raise _Refused(str(error)) from error
    except RuntimeError as error:
        raise _Unreachable(f"{error}; tried again every {remote.probe_interval_s:g} s") from error
    if metadata is None:
        raise _Refused(f"the inference backend {remote.url} does not serve a model '{card.id}'")
    problem = check_metadata(metadata, card.input.name, card.input.channels, card.output.name)
    if problem is not None:
        raise _Refused(problem)
    # The card's own version where the backend tells it: this service's /v2 metadata and a
    # denoise-triton-export repository's config.pbtxt do, so other weights under the same name
    # are refused instead of silently serving different results.
    parameters = metadata.get("parameters")
    told = parameters.get("card_version") if isinstance(parameters, dict) else None
    told = told if isinstance(told, str) else remote.card_version(card.id)
    if told is not None and told != card.version:
        raise _Refused(f"the inference backend serves version {told} of '{card.id}', the card is version {card.version}")
    remote.serve(card.id, TensorNames(card.input.name, card.output.name))
    return LoadedModel(
        card=card,
        session=None,
        providers=(REMOTE_PROVIDER,),
        path=card_dir / card.file,
        call_memory=REMOTE,
        remote=remote,
    )


def remote_backend(settings: Settings) -> RemoteBackend | None:
    """DENOISE_INFERENCE_URL's backend, or None where the models run here."""
    if settings.inference_url is None:
        return None
    return RemoteBackend(
        settings.inference_url,
        timeout_s=settings.inference_timeout_s,
        retries=settings.inference_retries,
        failures_to_open=settings.inference_failures_to_open,
        probe_interval_s=settings.inference_probe_interval_s,
        api_key=settings.inference_api_key.get_secret_value() if settings.inference_api_key else None,
    )


def shrink_arenas(model: LoadedModel) -> None:
    """Hand back what ONNX Runtime's CPU arenas hold beyond what is in use: a tiny call on each of
    the model's sessions with the arena-shrinkage run option (the arena frees its unused chunks
    when that call ends)."""
    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    card = model.card
    side = card.spatial_multiple * 16
    tiny = np.zeros((1, card.input.channels, side, side), np.float32)
    for session in (model.session, model.one_thread_session):
        if session is None:
            continue
        try:
            session.run([card.output.name], {card.input.name: tiny}, options)
        except Exception as error:  # the memory stays held; the service goes on
            logger.warning("model %s: arena not shrunk (%s)", card.id, type(error).__name__)


def uses_cpu_lanes(settings: Settings) -> bool:
    """Whether CPU models get a one-thread session for the lanes: only where a call would
    otherwise spread over several cores and there are several lanes to run side by side."""
    return settings.cpu_lanes > 1 and settings.intra_op_threads > 1


def _report(model: LoadedModel, requested: tuple[str, ...]) -> None:
    logger.info(
        "loaded model %s (%s/%s) on %s",
        model.card.id,
        model.card.modality,
        model.card.architecture,
        model.execution_provider,
    )
    if requested[0] != model.execution_provider and requested[0] != ORT_PROVIDERS["cpu"]:
        logger.warning(
            "!!! model %s asked for %s but its session runs on %s: the GPU provider failed to "
            "start (check the CUDA / TensorRT libraries) !!!",
            model.card.id,
            requested[0],
            model.execution_provider,
        )


def load_registry(settings: Settings) -> ModelRegistry:
    remote = remote_backend(settings)
    providers = (REMOTE_PROVIDER,) if remote is not None else select_providers(settings)
    registry = ModelRegistry(models_dir=settings.models_dir, requested_providers=providers, remote=remote)
    if remote is not None and not remote.wait_until_ready(settings.inference_start_wait_s):
        logger.warning("!!! inference backend %s did not answer /v2/health/ready in %.0f s !!!",
                       remote.url, settings.inference_start_wait_s)
    options = session_options(settings)
    root = settings.models_dir
    if not root.is_dir():
        logger.warning("!!! models folder %s does not exist: no model will be served !!!", root)
        registry.unserved.append(UnservedModel(str(root), "the models folder does not exist"))
        return registry
    card_dirs = sorted(p.parent for p in root.rglob(CARD_FILENAME))
    measured: dict[tuple[object, ...], CallMemory] = {}
    for onnx_path in sorted(root.rglob("*.onnx")):
        if not (onnx_path.parent / CARD_FILENAME).is_file():
            registry.unserved.append(
                UnservedModel(str(onnx_path.relative_to(root)), "no card.json beside it")
            )
    for card_dir in card_dirs:
        relative = str(card_dir.relative_to(root))
        try:
            model = _load_one(card_dir, settings, providers, options, remote)
        except (_Refused, OSError, ValueError) as error:
            registry.unserved.append(_unserved(relative, error))
            if isinstance(error, _Unreachable):
                registry.pending.append(card_dir)
            continue
        if model.card.id in registry.models:
            registry.unserved.append(UnservedModel(relative, "duplicate model id", model.card.id))
            continue
        required = settings.require_provider
        if model.remote is not None:  # the provider is the backend's; no local session to measure
            registry.models[model.card.id] = model
            logger.info("model %s (%s/%s) runs on the inference backend %s",
                        model.card.id, model.card.modality, model.card.architecture, remote and remote.url)
            continue
        if required is not None and model.execution_provider != ORT_PROVIDERS[required]:
            reason = (f"its session runs on {model.execution_provider}, but DENOISE_REQUIRE_PROVIDER={required} "
                      f"requires {ORT_PROVIDERS[required]}")
            logger.error("!!! model %s is not served: %s !!!", model.card.id, reason)
            registry.unserved.append(UnservedModel(relative, reason, model.card.id))
            registry.missing_provider.append(model.card.id)
            continue
        model = replace(model, call_memory=_call_memory(model, settings, measured))
        registry.models[model.card.id] = model
        _report(model, providers)
    for item in registry.unserved:
        logger.warning("model %s not served: %s", item.path, item.reason)
    _warn_defaults(registry)
    return registry


def _unserved(relative: str, error: Exception) -> UnservedModel:
    """What /readyz and /v1/models say of the card at ``relative`` that ``_load_one`` refused."""
    if isinstance(error, ValidationError):
        fields = ", ".join(".".join(map(str, e["loc"])) for e in error.errors())
        return UnservedModel(relative, f"card.json is invalid ({fields})")
    if isinstance(error, _Refused):
        return UnservedModel(relative, str(error), error.model_id)
    return UnservedModel(relative, f"card.json unreadable ({type(error).__name__})")


def load_pending(registry: ModelRegistry, settings: Settings) -> list[LoadedModel]:
    """Ask the backend again about the models it could not be asked about at start-up (it may
    start after this service, as pods of one Deployment do). Each one it now answers for is
    served or refused for good, with its reason; returns those now served."""
    assert registry.remote is not None, "only remote models wait for their backend"
    loaded: list[LoadedModel] = []
    for card_dir in list(registry.pending):
        relative = str(card_dir.relative_to(registry.models_dir))
        try:
            model = _load_one(card_dir, settings, registry.requested_providers, session_options(settings), registry.remote)
        except _Unreachable:
            continue
        except (_Refused, OSError, ValueError) as error:
            refused: UnservedModel | None = _unserved(relative, error)
        else:
            duplicate = model.card.id in registry.models
            refused = UnservedModel(relative, "duplicate model id", model.card.id) if duplicate else None
        registry.pending.remove(card_dir)
        registry.unserved = [u for u in registry.unserved if u.path != relative]
        if refused is not None:
            logger.warning("model %s not served: %s", relative, refused.reason)
            registry.unserved.append(refused)
            continue
        registry.models[model.card.id] = model
        loaded.append(model)
        logger.info("model %s (%s/%s) runs on the inference backend %s, which answers now",
                    model.card.id, model.card.modality, model.card.architecture, registry.remote.url)
    return loaded


def _call_memory(
    model: LoadedModel, settings: Settings, measured: dict[tuple[object, ...], CallMemory]
) -> CallMemory:
    """The model's working memory per call, measured once per network shape: the three U-Nets
    differ only in their weights, and one measurement of a full tile takes a second on a CPU."""
    card = model.card
    key = (card.architecture, card.parameters, card.input.channels, model.execution_provider)
    if key not in measured:
        side = probe_side(settings.call_pixels, card.spatial_multiple * 16)

        def run(batch: object) -> object:
            return model.session.run([card.output.name], {card.input.name: batch})

        try:
            measured[key] = measure(run, card.input.channels, side)
        except Exception as error:  # a model that fails here fails on requests too; not here
            logger.warning("model %s: working memory not measured (%s)", card.id, type(error).__name__)
            measured[key] = ASSUMED
        shrink_arenas(model)  # the measured call's memory is not kept as idle memory
        return_freed_memory()
        memory = measured[key]
        logger.info(
            "model %s: %.0f bytes of working memory a pixel (%s), %.0f MB for a call of %d pixels",
            card.id,
            memory.per_pixel,
            "measured on a %d x %d input" % (side, side) if memory.measured else "assumed: not measurable here",
            memory.for_pixels(settings.call_pixels) / 1e6,
            settings.call_pixels,
        )
    return measured[key]


def _warn_defaults(registry: ModelRegistry) -> None:
    for modality in registry.modalities():
        defaults = [
            m.card.id for m in registry.models.values() if m.card.modality == modality and m.card.default
        ]
        if len(defaults) > 1:
            logger.warning("several default models for %s (%s); serving %s", modality, defaults, defaults[0])
