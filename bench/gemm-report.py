# Merges the two outputs of one GPU-machine run — bench/cuda-gemm.cu sweep (mine.json) and
# bench/gemm-peers.py (peers.json) — into bench/results/h200-gemm.json, draws the speedup plot
# (bench/results/h200-gemm.png, needs matplotlib) and prints the markdown tables of bench/RESULTS.md.
#   python3 bench/gemm-report.py mine.json peers.json
import json
import math
import sys

mine = json.load(open(sys.argv[1]))
peers = json.load(open(sys.argv[2]))
peer = {(r["K"], r["N"], r["M"]): r for r in peers["rows"]}
copy_gbs = mine["copy_gbs"]

rows = []
for r in mine["rows"]:
    K, N, M = r["K"], r["N"], r["M"]
    p = peer[(K, N, M)]
    moved = r["weight_bytes"] + 2 * M * (K + N)  # weights + scales/zeros, X and Y (fp16)
    row = {
        "K": K, "N": N, "M": M, "bits": r["bits"], "group": r["group"],
        "us": r["us"],
        "pct_copy": round(100 * moved / (r["us"] * 1e3) / copy_gbs, 1),
        "tflops": round(2 * M * K * N / (r["us"] * 1e6), 1),
        "x_fp16": round(p["fp16_us"] / r["us"], 2),
        "x_bf16": round(p["bf16_us"] / r["us"], 2),
        "config": f'{r["config"]}/{r["splits"]}',
        "fused_us": r.get("fused_us"),
        "dequant_us": r.get("dequant_us") if r.get("dequant_us", -1) > 0 else None,
        "best_us": r["best_us"],
        "best_config": f'{r["best_config"]}/{r["best_splits"]}',
        "fp16_us": round(p["fp16_us"], 2),
        "tinygemm_us": round(p["tinygemm_us"], 2) if "tinygemm_us" in p else None,
    }
    rows.append(row)

out = {"device": mine["device"], "copy_gbs": copy_gbs, "peers_copy_gbs": round(peers["copy_gbs"], 1),
       "timing": "median per product inside a CUDA graph of 20 products over rotating weight copies (none in L2)",
       "rows": rows}
with open("bench/results/h200-gemm.json", "w") as f:
    json.dump(out, f, indent=0)

print(f"device {mine['device']}, copy {copy_gbs:.0f} GB/s\n")
print("| K × N | group | M | int4 µs | int3 µs | int2 µs | % of copy (4/3/2) | × cuBLAS fp16 (4/3/2) | cuBLAS fp16 µs | tinygemm µs | int4 × tinygemm |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
by = {(r["K"], r["N"], r["group"], r["M"], r["bits"]): r for r in rows}
shapes = []
for r in rows:
    key = (r["K"], r["N"], r["group"])
    if key not in shapes:
        shapes.append(key)
for K, N, g in shapes:
    for M in [1, 2, 4, 8, 16, 32, 64, 128, 256]:
        b = [by.get((K, N, g, M, bits)) for bits in (4, 3, 2)]
        if not all(b):
            continue
        t = b[0]["tinygemm_us"]
        print(f"| {K}×{N} | {g} | {M} | {b[0]['us']:.1f} | {b[1]['us']:.1f} | {b[2]['us']:.1f} | "
              f"{b[0]['pct_copy']:.0f}/{b[1]['pct_copy']:.0f}/{b[2]['pct_copy']:.0f}% | "
              f"{b[0]['x_fp16']:.2f}/{b[1]['x_fp16']:.2f}/{b[2]['x_fp16']:.2f} | {b[0]['fp16_us']:.1f} | "
              f"{'' if t is None else format(t, '.1f')} | {'' if t is None else format(t / b[0]['us'], '.2f')} |")

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("no matplotlib: plot skipped", file=sys.stderr)
    sys.exit(0)

Ms = [1, 2, 4, 8, 16, 32, 64, 128, 256]
fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
for ax, (K, N) in zip(axes, [(8192, 8192), (8192, 28672)]):
    for bits, color in ((4, "tab:blue"), (3, "tab:orange"), (2, "tab:green")):
        ys = [by[(K, N, 128, M, bits)]["x_fp16"] for M in Ms]
        ax.plot(Ms, ys, marker="o", color=color, label=f"lowbit int{bits} (g128)")
    ys = [peer[(K, N, M)]["fp16_us"] / peer[(K, N, M)]["tinygemm_us"] for M in Ms if "tinygemm_us" in peer[(K, N, M)]]
    if len(ys) == len(Ms):
        ax.plot(Ms, ys, marker="x", linestyle="--", color="gray", label="torch int4 tinygemm (g128)")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xticks(Ms)
    ax.set_xticklabels([str(m) for m in Ms])
    ax.set_title(f"K×N = {K}×{N}")
    ax.set_xlabel("M (rows of X)")
    ax.grid(True, which="both", alpha=0.3)
axes[0].set_ylabel("speedup over cuBLAS fp16 (same run)")
axes[0].legend(fontsize=8)
fig.suptitle(f"GPTQ products on the {mine['device']} (CUDA graphs, weights not in L2)")
fig.tight_layout()
fig.savefig("bench/results/h200-gemm.png", dpi=110)
print("wrote bench/results/h200-gemm.png", file=sys.stderr)
