"""The baseline for lowbit's CUDA GPTQ: the same algorithm written the straightforward way on the GPU
with PyTorch, in the textbook order of the reference gptq.py (Frantar et al.): H += X^T X per batch,
dead inputs, dampening, torch.linalg.cholesky -> cholesky_inverse -> upper cholesky, then the
blocked sweep with a per-column Python loop and the lazy batch update as one matmul per block.
Same shapes, tokens, bits and groups as bench/cuda-gptq.cu; fp32 throughout. Our own code, not the
reference's. Run on the GPU machine: python3 bench/gptq-torch-baseline.py
"""
import time

import torch

BITS, GROUP, BLOCK, DAMP = 4, 128, 128, 0.01
TOKENS, BATCH = 128 * 2048, 8192


def hessian(K, dev):
    H = torch.zeros(K, K, device=dev)
    n = 0
    for _ in range(TOKENS // BATCH):
        X = torch.randn(BATCH, K, device=dev)
        H *= n / (n + BATCH)
        n += BATCH
        X = X * (2.0 / n) ** 0.5
        H += X.t() @ X
    return H


def grid(w, maxq):
    # Per row of w: the asymmetric min/max grid of the reference quantizer.
    xmin = torch.minimum(w.min(1).values, torch.zeros(1, device=w.device))
    xmax = torch.maximum(w.max(1).values, torch.zeros(1, device=w.device))
    scale = (xmax - xmin) / maxq
    scale[scale == 0] = 1e-5
    zero = torch.round(-xmin / scale)
    return scale.unsqueeze(1), zero.unsqueeze(1)


def gptq(W, H):
    maxq = 2**BITS - 1
    W = W.clone()
    K = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += DAMP * torch.mean(torch.diag(H)) * torch.eye(K, device=W.device)
    L = torch.linalg.cholesky(H)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    Q = torch.zeros_like(W)
    for i1 in range(0, K, BLOCK):
        i2 = min(i1 + BLOCK, K)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            if (i1 + i) % GROUP == 0:
                scale, zero = grid(W[:, i1 + i : i1 + i + GROUP], maxq)
            w = W1[:, i : i + 1]
            q = torch.clamp(torch.round(w / scale) + zero, 0, maxq)
            Q[:, i1 + i : i1 + i + 1] = q
            err = (w - scale * (q - zero)) / Hinv1[i, i]
            W1[:, i:] -= err @ Hinv1[i : i + 1, i:]
            Err1[:, i : i + 1] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return Q


def main():
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 products, as lowbit
    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
    print(f"\n| torch baseline N x K (out x in) | Hessian, {TOKENS} tokens (s) | quantize 4-bit g128 (s) | total (s) |")
    print("| --- | --- | --- | --- |")
    for N, K in [(4096, 4096), (11008, 4096), (4096, 11008)]:
        W = torch.randn(N, K, device=dev) * 0.05
        best_h = best_q = float("inf")
        for _ in range(2):  # the first run includes warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            H = hessian(K, dev)
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            gptq(W, H)
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            best_h, best_q = min(best_h, t1 - t0), min(best_q, t2 - t1)
        print(f"| {N} x {K} | {best_h:.3f} | {best_q:.3f} | {best_h + best_q:.3f} |", flush=True)
        del H, W
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
