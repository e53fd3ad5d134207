"""GPU inference of the PyTorch DPN: fp32 / fp16 / bf16, NCHW and channels-last, batch 1/8/64.

For every architecture, images/s (median and spread of repeated timed runs after warm-up,
synchronized with ``torch.cuda.synchronize``) and the fraction of the card's peak that the
model's FLOPs over the measured time reach. Published comparison: PaddleClas reports DPN92
fp32, batch 1, 17.84 ms on a V100 (their inference benchmark table).

Without a CUDA device it prints one "no GPU" line and returns an empty result.
"""
import json
import sys
import time

from dpn_gluon import variants

DTYPES = ("float32", "float16", "bfloat16")
BATCHES = (1, 8, 64)
PADDLECLAS_V100_DPN92_FP32_BS1_MS = 17.84
#: dense peak TFLOP/s by (device-name fragment, dtype); fp16/bf16 are tensor-core figures
PEAK_TFLOPS = {
    ("H200", "float32"): 67.0, ("H200", "float16"): 989.0, ("H200", "bfloat16"): 989.0,
    ("H100", "float32"): 67.0, ("H100", "float16"): 989.0, ("H100", "bfloat16"): 989.0,
    ("A100", "float32"): 19.5, ("A100", "float16"): 312.0, ("A100", "bfloat16"): 312.0,
    ("V100", "float32"): 15.7, ("V100", "float16"): 125.0,
    ("T4", "float32"): 8.1, ("T4", "float16"): 65.0,
}


def _peak(device: str, dtype: str):
    for (frag, dt), tflops in PEAK_TFLOPS.items():
        if frag in device and dt == dtype:
            return tflops * 1e12
    return None


def measure(archs=None, dtypes=DTYPES, batches=BATCHES, repeats=10, warmup=3, out=sys.stderr):
    """{"device": name, "rows": [...]} or {} (with a printed "no GPU" line) without CUDA."""
    try:
        import torch
    except ImportError:
        print("gpu: no GPU benchmark: torch is not installed", file=out)
        return {}
    if not torch.cuda.is_available():
        print("gpu: no GPU: torch.cuda.is_available() is False; skipping the GPU benchmark",
              file=out)
        return {}
    from dpn_gluon import torch_dpn
    from dpn_gluon.checkpoint import seeded_tensors
    device = torch.cuda.get_device_name(0)
    torch.backends.cudnn.benchmark = True
    rows = []
    for name in archs or list(variants.ARCHS):
        base = torch_dpn.from_canonical(seeded_tensors(name, 0))
        flops = variants.conv_flops(variants.get_arch(name))
        for dtype in dtypes:
            if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
                continue
            for channels_last in (False, True):
                fmt = torch.channels_last if channels_last else torch.contiguous_format
                net = base.to("cuda", getattr(torch, dtype)).to(memory_format=fmt).eval()
                for batch in batches:
                    x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=getattr(torch, dtype))
                    x = x.contiguous(memory_format=fmt)
                    times = []
                    with torch.inference_mode():
                        for i in range(warmup + repeats):
                            torch.cuda.synchronize()
                            t0 = time.perf_counter()
                            net(x)
                            torch.cuda.synchronize()
                            if i >= warmup:
                                times.append(time.perf_counter() - t0)
                    times.sort()
                    med = times[len(times) // 2]
                    peak = _peak(device, dtype)
                    rows.append({"arch": name, "dtype": dtype, "channels_last": channels_last,
                                 "batch": batch, "ms": med * 1e3, "ms_min": times[0] * 1e3,
                                 "ms_max": times[-1] * 1e3, "images_s": batch / med,
                                 "tflops": flops * batch / med / 1e12,
                                 "of_peak": flops * batch / med / peak if peak else None})
        del base
    return {"device": device, "torch": torch.__version__, "rows": rows,
            "paddleclas_v100_dpn92_fp32_bs1_ms": PADDLECLAS_V100_DPN92_FP32_BS1_MS}


if __name__ == "__main__":
    print(json.dumps(measure()))
