"""Text-encoder outputs for sample prompts, with the encoders loaded only while encoding."""

from __future__ import annotations

import gc

import torch


@torch.no_grad()
def encode_texts(clip_tokenizer, t5_tokenizer, clip, t5, texts: list[str], t5_tokens: int, device,
                 t5_mask: bool = False) -> list[dict]:
    """One {pooled, t5, mask} per text, each with a batch of one, on the CPU (as training caches them);
    `t5_mask` (apply_t5_attn_mask) masks T5's own attention too, as training does."""
    out = []
    for text in texts:
        clip_ids = clip_tokenizer([text], padding="max_length", max_length=77, truncation=True,
                                  return_tensors="pt").input_ids.to(device)
        tokens = t5_tokenizer([text], padding="max_length", max_length=t5_tokens, truncation=True, return_tensors="pt")
        mask = tokens.attention_mask.to(device)
        out.append({"pooled": clip(clip_ids).pooler_output.float().cpu(),
                    "t5": t5(tokens.input_ids.to(device), attention_mask=mask if t5_mask else None
                             ).last_hidden_state.float().cpu(),
                    "mask": tokens.attention_mask.cpu()})
    return out


@torch.no_grad()
def pooled_outputs(kit, texts: list[str], device) -> list[torch.Tensor]:
    """CLIP-L's pooled output per text (batch of one, on the CPU), e.g. with a LoRA just set."""
    tokenizer, clip = kit
    return [clip(tokenizer([text], padding="max_length", max_length=77, truncation=True,
                           return_tensors="pt").input_ids.to(device)).pooler_output.float().cpu() for text in texts]


def encode_with_fresh_encoders(values: dict, texts: list[str], device, keep_clip: bool = False):
    """Load CLIP-L and T5 as training does, encode `texts`, free T5 (and CLIP-L unless `keep_clip`).
    Returns the outputs, or (outputs, (CLIP tokenizer, CLIP-L)) with `keep_clip`."""
    from engine.models.text_encoders import load_clip_l, load_t5, load_tokenizers

    clip_tokenizer, t5_tokenizer = load_tokenizers(values["clip_l_tokenizer_path"], values["t5xxl_tokenizer_path"])
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    clip = load_clip_l(values["clip_l"], dtype).to(device)
    t5 = load_t5(values["t5xxl"], dtype).to(device)
    try:
        out = encode_texts(clip_tokenizer, t5_tokenizer, clip, t5, texts, values["t5xxl_max_token_length"], device,
                           t5_mask=values["apply_t5_attn_mask"])
        return (out, (clip_tokenizer, clip)) if keep_clip else out
    finally:
        if not keep_clip:
            del clip
        del t5
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
