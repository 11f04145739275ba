"""Models and tokenizers for ``finetune``: pretrained, from a preset config, or from a config.json."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from hf_sparseout.loading import minilm_path, offline_hint
from hf_sparseout.training.args import FinetuneArgs, UsageError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase, PreTrainedTokenizerFast

PRESETS: dict[str, dict[str, Any]] = {
    # The offline default: small enough for a Sparseout-vs-dropout comparison in ~3 CPU minutes.
    "gpt2-tiny": {"model_type": "gpt2", "n_layer": 2, "n_embd": 128, "n_head": 4, "n_positions": 512},
    # The PTB sweep size of docs/RESULTS.md (4 layers, hidden 256).
    "gpt2-mini": {"model_type": "gpt2", "n_layer": 4, "n_embd": 256, "n_head": 4, "n_positions": 1024},
    # GPT-2 small's shape (124M with its 50k vocabulary), for GPU runs.
    "gpt2-small": {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024},
    # A Llama-shaped model: no dropout at all, so it needs --p and --insert (e.g. mlp.act_fn).
    "llama-tiny": {
        "model_type": "llama",
        "hidden_size": 128,
        "intermediate_size": 344,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
    },
    # A small BERT for classification when all-MiniLM-L6-v2 is not installed.
    "bert-tiny": {
        "model_type": "bert",
        "num_hidden_layers": 2,
        "hidden_size": 128,
        "num_attention_heads": 2,
        "intermediate_size": 512,
        "max_position_embeddings": 512,
    },
}
SPECIAL = {"bos": "<s>", "eos": "</s>", "pad": "<pad>", "unk": "<unk>", "cls": "<cls>", "sep": "<sep>"}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts`` (needs no download), as a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL["unk"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tok.token_to_id(SPECIAL["cls"]), tok.token_to_id(SPECIAL["sep"])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL['cls']} $A {SPECIAL['sep']}",
        pair=f"{SPECIAL['cls']} $A {SPECIAL['sep']} $B:1 {SPECIAL['sep']}:1",
        special_tokens=[(SPECIAL["cls"], cls_id), (SPECIAL["sep"], sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL["bos"],
        eos_token=SPECIAL["eos"],
        pad_token=SPECIAL["pad"],
        unk_token=SPECIAL["unk"],
        cls_token=SPECIAL["cls"],
        sep_token=SPECIAL["sep"],
    )


def default_model(args: FinetuneArgs, task: str) -> tuple[str | None, str | None]:
    """(model, from_config) to use when neither was given."""
    if args.model or args.from_config:
        return args.model, args.from_config
    if task == "classification" and minilm_path() is not None:
        return str(minilm_path()), None
    return None, "gpt2-tiny" if task == "causal-lm" else "bert-tiny"


def load_tokenizer(name: str, option: str = "--tokenizer") -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained`` with an offline-aware error naming the ``option`` that gave
    ``name``; pad token set for causal LMs."""
    from transformers import AutoTokenizer

    from hf_sparseout.loading import ModelNotAvailableError, check_hub_reachable

    hint = (
        "pass a local directory to --model, or set HF_HUB_OFFLINE=1 with a cached model"
        if option == "--model"
        else "pass a local tokenizer directory to --tokenizer; with --from-config, omit --tokenizer to train one"
    )
    try:
        check_hub_reachable(name)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ModelNotAvailableError) as err:
        raise UsageError(f"no tokenizer for {option} {name!r}: {offline_hint(name)}", hint) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def config_from(spec: str) -> PretrainedConfig:
    """The config of ``--from-config``: a preset name or a config.json (or its directory); ``UsageError``."""
    from transformers import AutoConfig

    if spec in PRESETS:
        kwargs = dict(PRESETS[spec])
        return AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    path = Path(spec)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise UsageError(
            f"--from-config {spec!r} is neither a preset nor a config.json", f"presets: {', '.join(PRESETS)}"
        )
    try:
        data = json.loads(path.read_text())
        return AutoConfig.for_model(data.pop("model_type"), **data)
    except (json.JSONDecodeError, KeyError, ValueError) as err:
        raise UsageError(
            f"{str(path)!r} is not a valid transformers config.json ({err})",
            f"pass a config.json with a model_type (as save_pretrained writes it), or a preset: {', '.join(PRESETS)}",
        ) from err


def build_model(
    model_name: str | None,
    from_config: str | None,
    task: str,
    tokenizer: PreTrainedTokenizerBase,
    labels: list[str] | None,
) -> nn.Module:
    """Load ``model_name`` or build ``from_config`` with the head for ``task``."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from hf_sparseout.loading import ModelNotAvailableError, load_model

    head = (
        {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {n: i for i, n in enumerate(labels)},
        }
        if labels
        else {}
    )
    if model_name is not None:
        try:
            model = load_model(model_name, task=task, **head)
        except ModelNotAvailableError as err:
            raise UsageError(
                str(err), "pass a local directory to --model, or set HF_HUB_OFFLINE=1 with a cached model"
            ) from err
        except ValueError as err:  # "Unrecognized configuration class ... for AutoModelFor..."
            raise _no_head(model_name, task, err) from err
    else:
        config = config_from(from_config)
        config.vocab_size = len(tokenizer)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            setattr(config, name, getattr(tokenizer, name, None))
        for key, value in head.items():
            setattr(config, key, value)
        cls = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
        try:
            model = cls.from_config(config)
        except ValueError as err:
            raise _no_head(str(from_config), task, err) from err
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return model


def _no_head(name: str, task: str, err: Exception) -> UsageError:
    other = "causal-lm" if task == "classification" else "classification"
    head = "sequence-classification" if task == "classification" else "causal-LM"
    return UsageError(
        f"{name!r} has no {head} head in transformers ({str(err).splitlines()[0][:160]})",
        f"use a model type with that head, or --task {other}",
    )


POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length")


def check_input_length(model: nn.Module, args: FinetuneArgs, task: str) -> None:
    """``UsageError`` before training when ``--block-size`` / ``--max-length`` exceeds the model's positions."""
    length, option = (args.block_size, "--block-size") if task == "causal-lm" else (args.max_length, "--max-length")
    config = model.config
    limit = next((getattr(config, k) for k in POSITION_KEYS if isinstance(getattr(config, k, None), int)), None)
    tables = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Embedding) and ("pos" in n.rsplit(".", 1)[-1] or n.endswith("wpe"))
    ]
    if not tables:
        return  # rotary / relative positions: no table to index past its end
    if limit is not None and length > limit:
        raise UsageError(
            f"{option} {length} is longer than the model's {limit} positions ({type(model).__name__})",
            f"use {option} {limit} or less",
        )


def enable_checkpointing(model: nn.Module) -> None:
    """Activation (gradient) checkpointing, non-reentrant, through transformers' current API.

    transformers 5.x renamed ``gradient_checkpointing_enable`` to ``activation_checkpointing_enable``
    (the old name warns); the old one is used only where the new one does not exist yet.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
