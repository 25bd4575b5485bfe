# Peers for bench/cuda-gemm.cu, in the same run on the same GPU: the device copy bandwidth, cuBLAS
# fp16 and bf16 (torch.nn.functional.linear) and torch's int4 tinygemm (aten._weight_int4pack_mm,
# groups of 128) over the shapes. Weights rotated through enough copies to overflow the L2;
# CUDA-event medians after warm-up, per call inside a CUDA graph of 20 calls (as bench/cuda-gemm.cu). Writes JSON rows to the path given (default peers.json).
import json
import sys

import torch

out_path = sys.argv[1] if len(sys.argv) > 1 else "peers.json"
dev = torch.device("cuda")
torch.manual_seed(0)


def median_us(fn, reps=30):
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1000.0)
    times.sort()
    return times[len(times) // 2]


src = torch.empty(1 << 30, dtype=torch.uint8, device=dev).fill_(1)
dst = torch.empty_like(src)
copy_us = median_us(lambda: dst.copy_(src), 20)
copy_gbs = 2.0 * (1 << 30) / copy_us / 1e3
del src, dst
print(f"device: {torch.cuda.get_device_name()}, copy {copy_gbs:.0f} GB/s (read + write)", flush=True)

shapes = [(4096, 4096), (4096, 11008), (11008, 4096), (8192, 8192), (8192, 28672), (28672, 8192)]
Ms = [1, 2, 4, 8, 16, 32, 64, 128, 256]
rows = []


def int4pack(K, N):
    """tinygemm's packed int4 weight [N, K] and its bf16 scales/zeros, or None where the op is missing."""
    q = torch.randint(0, 16, (N, K), dtype=torch.int32, device=dev)
    try:
        packed_u8 = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
        w = torch.ops.aten._convert_weight_to_int4pack(packed_u8, 8)
    except Exception as e1:  # older signature: int32 [N, K]
        try:
            w = torch.ops.aten._convert_weight_to_int4pack(q, 8)
        except Exception as e2:
            print("tinygemm unavailable:", e1, e2, flush=True)
            return None
    sz = torch.rand(K // 128, N, 2, device=dev, dtype=torch.bfloat16)
    return w, sz


BATCH = 20


def graph_us(make_call):
    """Median time of one call inside a CUDA graph of BATCH calls (launch latency not counted)."""
    calls = [make_call(i) for i in range(BATCH)]
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for c in calls[:3]:
            c()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for c in calls:
            c()
    return median_us(g.replay, 10) / BATCH


for K, N in shapes:
    copies = max(2, int(300e6 // (K * N * 2)) + 1)
    w16 = [torch.randn(N, K, device=dev, dtype=torch.float16) for _ in range(copies)]
    wb16 = [w.to(torch.bfloat16) for w in w16]
    i4 = [int4pack(K, N) for _ in range(max(2, int(300e6 // (K * N // 2)) + 1))]
    for M in Ms:
        x16 = torch.randn(M, K, device=dev, dtype=torch.float16)
        xb16 = x16.to(torch.bfloat16)
        F = torch.nn.functional
        row = {
            "K": K, "N": N, "M": M,
            "fp16_us": graph_us(lambda i: (lambda w=w16[i % copies]: F.linear(x16, w))),
            "bf16_us": graph_us(lambda i: (lambda w=wb16[i % copies]: F.linear(xb16, w))),
        }
        if i4[0] is not None:
            try:
                row["tinygemm_us"] = graph_us(
                    lambda i: (lambda p=i4[i % len(i4)]: torch.ops.aten._weight_int4pack_mm(xb16, p[0], 128, p[1])))
            except Exception as e:
                print("tinygemm failed:", e, flush=True)
        rows.append(row)
        print(row, flush=True)
    del w16, wb16, i4
    torch.cuda.empty_cache()

with open(out_path, "w") as f:
    json.dump({"device": torch.cuda.get_device_name(), "copy_gbs": copy_gbs, "rows": rows}, f, indent=0)
