# Perplexity against average stored bits per weight on stories260K (issue 12): SpQR runs from
# bench/results/spqr-quality-*.json (bench/spqr-quality.mjs), RTN and GPTQ (act-order) from
# bench/results/spqr-baselines.json (bench/RESULTS.md's GPTQ table, same protocol).
# Writes bench/results/spqr-quality.png.   python3 bench/spqr-plot.py
import glob, json, os
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

here = os.path.dirname(os.path.abspath(__file__))
res = os.path.join(here, "results")
fig, ax = plt.subplots(figsize=(7, 4.5))
base = json.load(open(os.path.join(res, "spqr-baselines.json")))["rows"]
styles = {("rtn", "32"): ("RTN g32", "s", "tab:gray"), ("rtn", "per-channel"): ("RTN per-channel", "v", "silver"),
          ("gptq", "32"): ("GPTQ g32 act-order", "o", "tab:blue"), ("gptq", "per-channel"): ("GPTQ per-channel act-order", "^", "tab:cyan")}
for key, (label, marker, color) in styles.items():
    pts = sorted((r["bpw"], r["ppl"]) for r in base if (r["method"], r["group"]) == key)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color, label=label)
fp = None
for path in sorted(glob.glob(os.path.join(res, "spqr-quality-*.json"))):
    data = json.load(open(path))
    o = data["meta"]["spqrOptions"]
    rows = sorted((r["bpw"], r["ppl"]) for r in data["rows"] if r["method"] == "spqr")
    fp = next((r["ppl"] for r in data["rows"] if r["method"] == "fp32"), fp)
    label = f"SpQR {o['beta1']}x{o['beta2']}, stat {o['statBits']} bits, budget {o['outlierBudget']*100:g}%, damp {o['damp']:g}"
    ax.plot([p[0] for p in rows], [p[1] for p in rows], marker="*", markersize=10, label=label)


def plot_round(names, marker, color, label):
    """One round's best row at each width (one run each), as one line; rounds whose files are absent are skipped."""
    pts = []
    for name in names:
        path = os.path.join(res, name + ".json")
        if os.path.exists(path):
            pts += [(r["bpw"], r["ppl"]) for r in json.load(open(path))["rows"] if r["method"] == "spqr"]
    if pts:
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, markersize=10, color=color, lw=2, label=label)


# The grid-search round (bench/RESULTS.md, SpQR third round).
plot_round(["spqr-2bit-16x16-noact-search-rowptr16", "spqr-3bit-32x32-search", "spqr-4bit-32x32-stat4-search"],
           "P", "black", "SpQR + grid search (2-bit 16x16 no act-order, 3/4-bit 32x32)")
# The second-level search round (SpQR fourth round): 2-bit 8x128 without outliers, 3-bit 32x32 with the
# search; 4-bit keeps the third round's row (the search was worse there).
plot_round(["spqr-2bit-8x128-noact-nooutliers-statsearch", "spqr-3bit-32x32-statsearch", "spqr-4bit-32x32-stat4-search"],
           "X", "tab:red", "SpQR + second-level search (2-bit 8x128 no outliers, 3-bit 32x32; 4-bit as above)")
if fp:
    ax.axhline(fp, color="k", lw=0.8, ls="--", label=f"fp32 {fp:.2f}")
    ax.axhline(2 * fp, color="r", lw=0.8, ls=":", label="2x fp32")
ax.set_yscale("log")
ax.set_xlabel("average stored bits per weight (all block linears)")
ax.set_ylabel("perplexity, tinystories-valid.eval.txt")
ax.set_title("stories260K: perplexity vs bits per weight")
ax.grid(True, which="both", lw=0.3)
ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(os.path.join(res, "spqr-quality.png"), dpi=110)
