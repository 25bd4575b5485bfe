# The ceilings and the peer of bench/forward-gpu.mjs, on the GPU machine (PyTorch there):
#   copy: a 4 GiB device-to-device copy (bytes read + written per second, median of 20, events);
#   peer: transformers' LlamaForCausalLM in fp16 on the same Llama-2-7B shape (random weights made
#         on the GPU), eager: prefill of 1 x 2048 tokens (logits of the last position only) and
#         batch-1 decode steps with its KV cache after a 512-token prompt.
# Usage: python3 bench/forward-gpu-peer.py OUT.json [--skip-peer]. Prints one line per number.
import json
import sys
import time

import torch

out_path = sys.argv[1]
result = {}

x = torch.randn(1 << 30, dtype=torch.float16, device="cuda")
y = torch.empty_like(x)
times = []
for i in range(23):
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    y.copy_(x)
    b.record()
    b.synchronize()
    if i >= 3:
        times.append(a.elapsed_time(b) / 1e3)
times.sort()
copy_gbs = 2 * x.numel() * 2 / times[len(times) // 2] / 1e9
result["copy_gbs"] = copy_gbs
result["device"] = torch.cuda.get_device_name()
print(f"copy {copy_gbs:.0f} GB/s", flush=True)
del x, y

if "--skip-peer" not in sys.argv:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
    torch.set_default_dtype(torch.float16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 32000, (1, 2048), device="cuda")
    with torch.no_grad():
        model(ids[:, :128], logits_to_keep=1)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(3):
            model(ids, logits_to_keep=1)
        torch.cuda.synchronize()
        prefill = (time.perf_counter() - t) / 3
        out = model(ids[:, :512], use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        nxt = ids[:, 512:513]
        steps = 32
        torch.cuda.synchronize()
        t = time.perf_counter()
        for i in range(steps):
            out = model(nxt, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
        decode = steps / (time.perf_counter() - t)
    result["peer"] = {"name": "transformers LlamaForCausalLM fp16 eager", "prefill_tok_s": 2048 / prefill,
                      "decode_tok_s": decode, "memory_gib": torch.cuda.max_memory_allocated() / 2**30}
    print(f"peer prefill {2048 / prefill:.0f} tok/s, decode {decode:.1f} tok/s", flush=True)

with open(out_path, "w") as f:
    json.dump(result, f)
