#!/usr/bin/env python3
"""Check that Hugging Face transformers loads a fluxmoe checkpoint and computes the
same function: logits and router choices of `MixtralForCausalLM` (or whatever
`AutoModelForCausalLM` picks from config.json) against `fluxmoe logits`.

Needs torch, transformers and safetensors (not part of CI: torch is several GB).

    python3 scripts/transformers_check.py --model DIR [--fluxmoe target/release/fluxmoe]

Runs `fluxmoe logits` on the same token ids, then prints the largest absolute logit
difference, the share of positions whose argmax agrees, and, per MoE layer, the share
of tokens whose selected expert set agrees. Exits 1 when the logits differ by more
than --tol (default 1e-3).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--fluxmoe", default="target/release/fluxmoe")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--seq", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    with open(os.path.join(args.model, "config.json")) as f:
        cfg = json.load(f)
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, cfg["vocab_size"], (2, args.seq), generator=g)

    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        out = model(ids, output_router_logits=True)
    ref = out.logits

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "out.safetensors")
        text = ";".join(",".join(str(int(x)) for x in row) for row in ids)
        subprocess.run(
            [args.fluxmoe, "logits", "--model", args.model, "--ids", text, "--out", path],
            check=True,
        )
        ours = load_file(path)

    diff = (ours["logits"] - ref).abs().max().item()
    agree = (ours["logits"].argmax(-1) == ref.argmax(-1)).float().mean().item()
    print(f"model        {type(model).__name__} from {args.model}")
    print(f"tokens       2 x {args.seq} (seed {args.seed})")
    print(f"max |dlogit| {diff:.3e}")
    print(f"argmax agree {agree:.4f}")
    k = cfg.get("num_experts_per_tok", 2)
    router = getattr(out, "router_logits", None) or ()
    for layer, logits in enumerate(router):
        theirs = torch.topk(logits, k, dim=-1).indices.sort(-1).values
        key = f"topk_idx.{layer}"
        if key not in ours:
            continue
        mine = ours[key].long().sort(-1).values
        same = (mine == theirs).all(-1).float().mean().item()
        print(f"layer {layer:>2}     expert sets agree {same:.4f}")
    sys.exit(0 if diff <= args.tol else 1)


if __name__ == "__main__":
    main()
