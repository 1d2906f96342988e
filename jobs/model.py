"""Load the tokenizer and the model a recipe trains: full, LoRA, or QLoRA (4-bit base + LoRA).

Why the care: the classic SFT pitfalls live here. A model silently random-initialised (wrong id,
missing weights) still trains and "converges"; a pad token equal to EOS makes the collator mask
EOS out of the labels so the model never learns to stop; gradient checkpointing with the KV
cache on wastes memory and warns every step. Only the tiny test model is ever built from scratch.
"""

from __future__ import annotations

from sftcore import contract
from sftcore.errors import UserError

TINY_MODEL_ID = contract.TINY_MODEL_ID
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def resolve_model_path(recipe) -> str:
    """The path or hub id to load; the tiny id is built locally (the one random-init model)."""
    model_id = recipe.model.id
    if model_id == TINY_MODEL_ID:
        from jobs.tiny import ensure_tiny

        return str(ensure_tiny())
    return model_id


def _torch_dtype(recipe):
    import torch

    return getattr(torch, DTYPES[recipe.train.precision])


def load_tokenizer(recipe, path: str | None = None):
    from transformers import AutoTokenizer

    path = path or resolve_model_path(recipe)
    try:
        tok = AutoTokenizer.from_pretrained(path, revision=recipe.model.revision,
                                            trust_remote_code=recipe.model.trust_remote_code)
    except OSError as exc:
        raise UserError(f"model.id {recipe.model.id!r}: cannot load its tokenizer ({str(exc).splitlines()[0]}); "
                        "check the id/revision and HF_TOKEN for gated models") from exc
    from jobs.templates import prepare_tokenizer

    prepare_tokenizer(tok, recipe.data.template)  # the chat template the saved tokenizer carries
    ensure_pad_token(tok)
    return tok


def ensure_pad_token(tok) -> bool:
    """Give the tokenizer a pad token distinct from EOS; True when a new token was added.

    Why the order: a token the vocabulary already has costs nothing, a new one resizes the
    embeddings and the head, and peft then saves both in every adapter (4 GB in fp32 for Llama 3
    8B). Llama 3 has neither pad nor unk but reserves special tokens for this: Llama 3.1's
    `<|finetune_right_pad_id|>` (id 128004), Llama 3's `<|reserved_special_token_N|>`."""
    if tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id:
        return False
    if tok.unk_token_id is not None and tok.unk_token_id != tok.eos_token_id:
        tok.pad_token = tok.unk_token
        return False
    reserved = reserved_pad_token(tok)
    if reserved is not None:
        tok.pad_token = reserved
        return False
    tok.add_special_tokens({"pad_token": "<pad>"})
    return True


def reserved_pad_token(tok) -> str | None:
    """An added special token the vocabulary reserves and no template uses: one named for padding
    first (`<|finetune_right_pad_id|>`, `<|pad|>`), else the lowest `reserved` one."""
    added = tok.get_added_vocab()
    in_use = {t for t in (tok.bos_token, tok.eos_token, tok.unk_token) if t}
    template = getattr(tok, "chat_template", None) or ""
    free = {t: i for t, i in added.items() if t not in in_use and t not in template}
    for word in ("pad", "reserved"):
        named = [t for t in free if word in t.lower()]
        if named:
            return min(named, key=free.get)
    return None


def _quant_config(recipe):
    import torch
    from transformers import BitsAndBytesConfig

    q = recipe.quantization  # the schema allows 4-bit only
    quant_type = getattr(q, "quant_type", "nf4") if q else "nf4"
    double = getattr(q, "double_quant", True) if q else True
    compute = getattr(q, "compute_dtype", None) if q else None
    compute_dtype = getattr(torch, compute) if compute else _torch_dtype(recipe)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_use_double_quant=double, bnb_4bit_compute_dtype=compute_dtype)


def lora_config(recipe):
    from peft import LoraConfig

    lo = recipe.lora
    targets = lo.target_modules if lo is not None else "all-linear"
    if isinstance(targets, (list, tuple)) and list(targets) == ["all-linear"]:
        targets = "all-linear"
    return LoraConfig(r=lo.r if lo else 16, lora_alpha=lo.alpha if lo else 32,
                      lora_dropout=lo.dropout if lo else 0.05, target_modules=targets,
                      bias="none", task_type="CAUSAL_LM")


def load_model(recipe, tokenizer, path: str | None = None, gradient_checkpointing: bool | None = None):
    """The model ready for the Trainer (a PeftModel for lora/qlora)."""
    from transformers import AutoModelForCausalLM

    from jobs import speed

    path = path or resolve_model_path(recipe)
    kwargs = {"revision": recipe.model.revision, "trust_remote_code": recipe.model.trust_remote_code}
    attn = speed.attention_implementation()
    if attn != "sdpa":  # sdpa is transformers' own default where a model supports it
        kwargs["attn_implementation"] = attn
    method = recipe.method
    if method == "qlora":
        kwargs["quantization_config"] = _quant_config(recipe)
        kwargs["dtype"] = kwargs["quantization_config"].bnb_4bit_compute_dtype
    elif method == "lora":
        # The frozen base needs no fp32 master copy: load it in the compute dtype (bf16, or fp16
        # where the GPU lacks bf16); the adapter weights peft adds stay fp32 for the optimizer.
        kwargs["dtype"] = _torch_dtype(recipe)
    else:
        # Full fine-tuning keeps fp32 master weights; mixed precision casts per op.
        import torch

        kwargs["dtype"] = torch.float32
    device_map = rank_device_map(method, recipe.train.deepspeed)
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except ValueError as exc:  # a family without flash-attention support: its default attention
            if "attn_implementation" not in kwargs or "ttention" not in str(exc):
                raise
            kwargs.pop("attn_implementation")
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise UserError(f"model.id {recipe.model.id!r}: cannot load its weights ({str(exc).splitlines()[0]}); "
                        "check the id/revision and HF_TOKEN for gated models") from exc
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id  # chatml may have made <|im_end|> the EOS
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    gc = speed.gradient_checkpointing(recipe) if gradient_checkpointing is None else gradient_checkpointing
    if method == "qlora":
        keep_4bit_training_kernel_on_cpu(model)
        prepare_for_kbit_training(model, gc)
    elif gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if gc:
        model.config.use_cache = False
    if method in ("lora", "qlora"):
        from peft import get_peft_model

        if gc and method == "lora":
            model.enable_input_require_grads()
        model = get_peft_model(model, lora_config(recipe))
    return model


def rank_device_map(method: str, deepspeed: str | None) -> dict | None:
    """Where this rank loads an adapter run's base model: its own GPU (LOCAL_RANK).

    Why: without a device_map every rank of a multi-GPU QLoRA run quantizes its copy onto cuda:0
    (out of memory there, or accelerate's "can't train a model that has been loaded in 8-bit or
    4-bit precision on a different device" on rank 1+); accelerate's own advice is
    `device_map={'': torch.cuda.current_device()}`, which is LOCAL_RANK once the process group has
    set the device. A LoRA base in 16-bit goes straight to its GPU too instead of through host RAM.
    Full fine-tunes (and DeepSpeed runs) are placed by the Trainer/DeepSpeed: None.
    """
    import torch

    if method not in ("lora", "qlora") or deepspeed or not torch.cuda.is_available():
        return None
    from jobs.collectives import local_rank

    return {"": local_rank()}


def prepare_for_kbit_training(model, gradient_checkpointing: bool) -> None:
    """peft's prepare_model_for_kbit_training (peft 0.21, utils/other.py) for a transformers model
    with use_reentrant=False, except that fused MoE expert tensors stay in the compute dtype.

    Why: peft upcasts every 16-bit parameter that is not a Params4bit to fp32 (norms, embeddings,
    head: small, and better in fp32). transformers 5 stores MoE experts as fused 3-D parameters
    that bitsandbytes does not quantize, so peft would also upcast those frozen experts: Mixtral's
    45B expert weights would go from 90 GB (bf16) to 180 GB and no single GPU could train it.
    They are frozen (LoRA trains adapters only), so fp32 buys nothing for them. launcher.estimate
    counts the same: non-4-bit parameters at 4 bytes, fused experts at 2.
    """
    import torch

    for param in model.parameters():
        param.requires_grad = False
    for param in model.parameters():
        if (param.dtype in (torch.float16, torch.bfloat16) and param.__class__.__name__ != "Params4bit"
                and not is_fused_expert(param)):
            param.data = param.data.to(torch.float32)
    if gradient_checkpointing:
        # use_reentrant=False needs no input-grad hook (peft skips it for the same reason).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def is_fused_expert(param) -> bool:
    """A fused MoE expert tensor: [experts, out, in], the only 3-D parameters a causal LM has."""
    return param.dim() == 3


def keep_4bit_training_kernel_on_cpu(model) -> None:
    """Turn off bitsandbytes' CPU-only AVX512-BF16 inference repack of 4-bit weights.

    Why: on a CPU with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit's weight for a bf16
    inference kernel on the first no-grad forward in eval mode (the Trainer's eval pass) and never
    unpacks it, so every later training step runs through that kernel: gradients change (measured
    on a 2-layer test model) and a layer whose in_features is not a multiple of the 64-value
    quantization block crashes ("shape '[32, 0]' is invalid"). GPUs never take that path, so this
    only keeps CPU QLoRA training the same whatever the CPU's features.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _numel(param) -> int:
    """Under ZeRO-3 (zero.Init) a rank holds an empty shard; ds_numel is the parameter's size."""
    return getattr(param, "ds_numel", None) or param.numel()


def describe(model) -> str:
    trainable = sum(_numel(p) for p in model.parameters() if p.requires_grad)
    total = sum(_numel(p) for p in model.parameters())
    return f"parameters: {total:,} total, {trainable:,} trainable ({100 * trainable / max(total, 1):.2f}%)"

