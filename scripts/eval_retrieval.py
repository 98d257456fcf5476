"""Image-text retrieval: stock vs random / ToMe / semantic-only / Turbo, in one run.

Recall@1/5/10 in both directions (image->text: an image counts when any of its captions is in its top k;
text->image: a caption counts when its image is in its top k), for every setting, plus speed of the image
side (the only side Turbo changes) against the stock model. Writes <out>/<name>.json, .md and .png.

Scores:
- ITC (contrastive, all pairs): CLIP and SigLIP (`get_image_features` / `get_text_features`), BLIP
  (`BlipForImageTextRetrieval`: [CLS] projections), BLIP-2 (`Blip2ForImageTextRetrieval`: best of the
  query tokens). Text embeddings are computed once: Turbo only touches the vision encoder.
- ITM re-ranking (BLIP, BLIP-2; --itm-k K > 0): the K best ITC candidates of each image and of each text
  are re-scored with the matching head, through the model's own forward (so the Turbo classes' handling of
  merged tokens in cross-attention applies), with the image encoded once per setting; final score = ITM
  match logit + ITC similarity (as in BLIP's evaluation), -100 outside the top K. The BLIP papers use
  K = 256 (COCO) and 128 (Flickr30k); the default here is 16.

Data (an image column and one or more caption columns, each a string or a list of strings):
- nlphuji/flickr_1k_test_image_text_retrieval (Flickr30k 1k test: image, caption (5 per image)):
  `--dataset nlphuji/flickr_1k_test_image_text_retrieval --split test`;
- nlphuji/flickr30k (all 31k images in one "test" split; Karpathy splits in the `split` column):
  `--dataset nlphuji/flickr30k --split test --where split=test --caption-column caption`;
- intro/flickr8k: `--split test --caption-column caption_0,caption_1,caption_2,caption_3,caption_4`;
- a local .jsonl file of {"image": "path.jpg", "captions": ["...", "..."]} or an imagefolder with a
  metadata.jsonl holding a captions column.

    accelerate launch scripts/eval_retrieval.py --model Salesforce/blip-itm-base-flickr \
        --dataset nlphuji/flickr_1k_test_image_text_retrieval --turbo-preset blip-itm-base-flickr \
        --modes none,tome,turbo --r 0,16,30
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if (REPO_ROOT / "src" / "turbo_hf").is_dir() and str(REPO_ROOT / "src") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "src"))  # run from a checkout without installing the package

PROG = "eval_retrieval.py"


def parse_args(argv=None) -> argparse.Namespace:
    from turbo_hf.evaluation.driver import add_common_arguments

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, batch_size=32)
    parser.add_argument("--caption-column", default="caption",
                        help="caption column(s), comma-separated; each holds a string or a list of strings")
    parser.add_argument("--itm-k", type=int, default=16,
                        help="BLIP / BLIP-2: re-rank the top K ITC candidates with the ITM head (0: ITC only)")
    parser.add_argument("--max-text-length", type=int, default=64, help="tokens per caption")
    return parser.parse_args(argv)


def model_family(model) -> str:
    from transformers import Blip2ForImageTextRetrieval, BlipForImageTextRetrieval

    if isinstance(model, BlipForImageTextRetrieval):
        return "blip"
    if isinstance(model, Blip2ForImageTextRetrieval):
        return "blip2"
    if hasattr(model, "get_image_features") and hasattr(model, "get_text_features"):
        return "dual"
    return "unsupported"


class CachedVision:
    """While active, `vision_model(...)` returns stored outputs (rows `select`) instead of recomputing them,
    so ITM re-ranking encodes every image once per setting. `calls` counts the substituted calls."""

    def __init__(self, vision_model, outputs) -> None:
        self.vision_model = vision_model
        self.output_type = type(outputs[0])
        self.fields = {}
        for name in outputs[0].keys():
            values = [getattr(o, name) for o in outputs]
            if all(hasattr(v, "shape") for v in values):
                import torch

                self.fields[name] = torch.cat(values)
        self.select = None
        self.calls = 0

    def __enter__(self):
        def forward(*args, **kwargs):
            self.calls += 1
            return self.output_type(**{name: value[self.select] for name, value in self.fields.items()})

        self.vision_model.forward = forward
        return self

    def __exit__(self, *exc) -> None:
        del self.vision_model.forward


def run(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer

    from turbo_hf.evaluation.driver import (
        RETRIEVAL_FAMILIES,
        Runner,
        UsageError,
        check_family,
        check_settings,
        as_tensor,
        evaluate_settings,
        image_preprocessor,
        load_data,
        load_model,
        require_columns,
        row_texts,
        run_batches,
        settings_from_args,
        split_columns,
        write_outputs,
    )
    from turbo_hf.evaluation.metrics import retrieval_recall

    settings = settings_from_args(args)
    check_family(args.model, RETRIEVAL_FAMILIES)  # before any data or weights load
    caption_columns = split_columns(args.caption_column)
    runner = Runner(cpu=args.cpu)
    with runner.main_process_first():  # downloads and dataset caches are made once
        data = load_data(args.dataset, args.split, args.dataset_config, args.where, args.max_samples, args.image_column,
                         seed=args.sample_seed)
    require_columns(data, image_column=args.image_column, caption_column=caption_columns)
    model = load_model(args.model, ["AutoModel"], args.dtype, args.attn).to(runner.device)
    check_settings(model, settings)  # an unsupported model or an impossible r fails before any work
    family = model_family(model)
    if family == "unsupported":
        raise UsageError(
            f"{type(model).__name__} cannot score image-text pairs: use CLIP / SigLIP (AutoModel), "
            "BlipForImageTextRetrieval or Blip2ForImageTextRetrieval."
        )
    dtype = next(model.parameters()).dtype
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    except Exception as error:
        raise UsageError(f"No tokenizer found with {args.model!r}: {error}") from error
    preprocess = image_preprocessor(args.model, model)

    # --- the texts, flattened, and the image each belongs to
    texts, text_to_image = [], []
    for image_index, row in enumerate(data.select_columns(caption_columns)):
        captions = row_texts(row, caption_columns)
        if not captions:
            raise UsageError(f"Row {image_index} has no caption in {caption_columns}.")
        texts.extend(captions)
        text_to_image.extend([image_index] * len(captions))
    num_images, num_texts = len(data), len(texts)
    runner.print(f"{num_images} images, {num_texts} captions; {family} scoring on {runner.device}")

    padding = "max_length" if "siglip" in model.config.model_type else True
    query_prefix = 0  # BLIP-2 with image placeholders in the text expects `num_query_tokens` of them first
    if family == "blip2" and getattr(model.config, "image_token_index", None) is not None:
        query_prefix = model.config.num_query_tokens

    def tokens(batch_texts):
        encoded = tokenizer(batch_texts, padding=padding, truncation=True, max_length=args.max_text_length,
                            return_tensors="pt")
        return {k: v.to(runner.device) for k, v in encoded.items() if k in ("input_ids", "attention_mask")}

    def pixels(indices):
        return preprocess(data[indices][args.image_column]).to(runner.device, dtype)

    # --- text side, once (stock)
    @torch.inference_mode()
    def text_work(indices):
        encoded = tokens([texts[i] for i in indices])
        if family == "dual":
            embeds = as_tensor(model.get_text_features(**encoded))
        elif family == "blip":
            hidden = model.text_encoder(**encoded).last_hidden_state
            embeds = model.text_proj(hidden[:, 0])
        else:
            query = model.embeddings(input_ids=encoded["input_ids"])
            hidden = model.qformer(query_embeds=query, query_length=0, attention_mask=encoded.get("attention_mask"))[0]
            embeds = model.text_projection(hidden[:, 0].to(model.text_projection.weight.dtype))
        embeds = F.normalize(embeds.float(), dim=-1).cpu().numpy()
        return [{"index": i, "embed": embeds[row]} for row, i in enumerate(indices)]

    text_records = run_batches(runner, num_texts, args.batch_size, text_work, "text embeddings")
    text_embeds = np.stack([r["embed"] for r in text_records])

    use_itm = family in ("blip", "blip2") and args.itm_k > 0
    k_itm = min(args.itm_k, num_texts, num_images) if use_itm else 0

    # --- image side, per setting
    vision_outputs: list = []

    @torch.inference_mode()
    def encode_images(pixel_values, keep_vision: bool = False):
        if family == "dual":
            return F.normalize(as_tensor(model.get_image_features(pixel_values=pixel_values)).float(), dim=-1)
        if family == "blip":
            output = model.vision_model(pixel_values=pixel_values)
            if keep_vision:
                vision_outputs.append(output)
            return F.normalize(model.vision_proj(output.last_hidden_state[:, 0]).float(), dim=-1)
        captured = {}
        hook = model.vision_model.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
        try:
            length = query_prefix + 2  # the model drops `num_query_tokens` image placeholders when it has them
            dummy = torch.full((pixel_values.shape[0], length), tokenizer.cls_token_id or 0, device=pixel_values.device)
            output = model(pixel_values=pixel_values, input_ids=dummy, attention_mask=torch.ones_like(dummy),
                           use_image_text_matching_head=False)
        finally:
            hook.remove()
        if keep_vision:
            vision_outputs.append(captured["out"])
        return output.image_embeds.float()  # (B, queries, D), normalised by the model

    def image_work(indices):
        embeds = encode_images(pixels(indices)).cpu().numpy()
        return [{"index": i, "embed": embeds[row]} for row, i in enumerate(indices)]

    def similarity(image_embeds: np.ndarray) -> np.ndarray:
        if image_embeds.ndim == 3:  # BLIP-2: best query token
            return np.einsum("iqd,td->iqt", image_embeds, text_embeds).max(axis=1)
        return image_embeds @ text_embeds.T

    @torch.inference_mode()
    def itm_scores(cache: CachedVision, image_rows, text_rows) -> np.ndarray:
        """ITM match logits of the pairs (image_rows[j], text_rows[j])."""
        cache.select = torch.as_tensor(image_rows, device=runner.device)
        encoded = tokens([texts[t] for t in text_rows])
        size = getattr(model.config.vision_config, "image_size", 224)
        dummy = torch.zeros(len(image_rows), 3, size, size, device=runner.device, dtype=dtype)
        if query_prefix:
            prefix = torch.full((len(text_rows), query_prefix), model.config.image_token_index, device=runner.device)
            encoded["input_ids"] = torch.cat([prefix, encoded["input_ids"]], dim=1)
            encoded["attention_mask"] = torch.cat([torch.ones_like(prefix), encoded["attention_mask"]], dim=1)
        calls = cache.calls
        if family == "blip":
            logits = model(pixel_values=dummy, use_itm_head=True, **encoded).itm_score
        else:
            logits = model(pixel_values=dummy, use_image_text_matching_head=True, **encoded).logits_per_image
        if cache.calls == calls:
            raise RuntimeError(f"{type(model).__name__}.forward did not call `vision_model`: ITM re-ranking "
                               "cannot reuse the encoded images; use --itm-k 0.")
        return logits[:, 1].float().cpu().numpy()

    def evaluate(setting):
        metrics = {}
        if use_itm:  # every process encodes every image (re-ranking needs them all), ITM rows are shared out
            vision_outputs.clear()
            embeds = []
            for start in runner.progress(range(0, num_images, args.batch_size), desc=f"{setting.name} images"):
                indices = list(range(start, min(start + args.batch_size, num_images)))
                embeds.append(encode_images(pixels(indices), keep_vision=True).cpu().numpy())
            image_embeds = np.concatenate(embeds)
        else:
            records = run_batches(runner, num_images, args.batch_size, image_work, f"{setting.name} images")
            image_embeds = np.stack([r["embed"] for r in records])
        sim = similarity(image_embeds)
        if runner.is_main:
            metrics.update({f"itc_{k}": v for k, v in retrieval_recall(sim, text_to_image).items()})
        if use_itm:
            jobs = [("i2t", i) for i in range(num_images)] + [("t2i", t) for t in range(num_texts)]
            with CachedVision(model.vision_model, vision_outputs) as cache:

                def itm_work(job_indices):
                    records = []
                    for j in job_indices:
                        direction, row = jobs[j]
                        if direction == "i2t":
                            top = np.argsort(-sim[row], kind="stable")[:k_itm]
                            scores = itm_scores(cache, [row] * len(top), top.tolist())
                        else:
                            top = np.argsort(-sim[:, row], kind="stable")[:k_itm]
                            scores = itm_scores(cache, top.tolist(), [row] * len(top))
                        records.append({"index": j, "top": top, "scores": scores})
                    return records

                records = run_batches(runner, len(jobs), 1, itm_work, f"{setting.name} ITM")
            if runner.is_main:
                i2t = np.full_like(sim, -100.0)
                t2i = np.full_like(sim, -100.0)
                for record in records:
                    direction, row = jobs[record["index"]]
                    if direction == "i2t":
                        i2t[row, record["top"]] = record["scores"] + sim[row, record["top"]]
                    else:
                        t2i[record["top"], row] = record["scores"] + sim[record["top"], row]
                from_i2t = retrieval_recall(i2t, text_to_image)
                from_t2i = retrieval_recall(t2i, text_to_image)
                itm = {k: v for k, v in from_i2t.items() if k.startswith("i2t")}
                itm.update({k: v for k, v in from_t2i.items() if k.startswith("t2i")})
                itm["rsum"] = sum(v for k, v in itm.items() if "R@" in k)
                metrics.update({f"itm_{k}": v for k, v in itm.items()})
            vision_outputs.clear()
        if not runner.is_main:
            return None
        best = "itm" if use_itm else "itc"
        for key in ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "rsum"):
            metrics[key] = metrics[f"{best}_{key}"]
        metrics["scores"] = best
        return metrics

    timing_size = args.timing_batch_size or args.batch_size
    timing_pixels = pixels([i % num_images for i in range(timing_size)])
    rows = evaluate_settings(
        runner, model, settings, evaluate, lambda: encode_images(timing_pixels), timing_size, timing_pixels,
        args.warmup, args.repeats, flops=not args.no_flops,
    )
    table = [("i2t_R@1", "image->text R@1"), ("i2t_R@5", "i2t R@5"), ("i2t_R@10", "i2t R@10"),
             ("t2i_R@1", "text->image R@1"), ("t2i_R@5", "t2i R@5"), ("t2i_R@10", "t2i R@10"), ("rsum", "RSUM")]
    if use_itm:
        table += [("itc_i2t_R@1", "ITC i2t R@1"), ("itc_t2i_R@1", "ITC t2i R@1")]
    notes = (
        f"Model `{args.model}` ({family}), dataset `{args.dataset}`: {num_images} images, {num_texts} captions. "
        + (f"Recall after ITM re-ranking of the top {k_itm} ITC candidates (ITC recall in the last columns). "
           if use_itm else "Recall from ITC (contrastive) similarity. ")
        + "Speed: encoding one batch of images (the text side does not change)."
    )
    write_outputs(runner, args, "retrieval", rows, table, "Image-text retrieval: token reduction against the stock model",
                  notes, extra={"dataset": {"name": args.dataset, "split": args.split, "images": num_images,
                                            "texts": num_texts}, "family": family, "itm_k": k_itm},
                  plot_metrics=[("i2t_R@1", "image->text R@1 (%)"), ("t2i_R@1", "text->image R@1 (%)")])
    return 0


def main(argv=None) -> int:
    from turbo_hf.evaluation.driver import cli_main

    return cli_main(run, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
