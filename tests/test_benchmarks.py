"""Smoke test of the benchmark runner's parts (tiny settings, no timing asserted: slow)."""
import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_inference_backends_agree():
    pytest.importorskip("mxnet")
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from benchmarks import inference
    res = inference.measure(list(inference.BACKENDS), "dpn68", [1], threads=2, repeats=1,
                            warmup=0, min_time=0.01)
    ref = np.asarray(res["module"]["1"]["logits"])
    for backend in inference.BACKENDS:
        row = res[backend]["1"]
        assert len(row["samples"]) == 1 and row["samples"][0] > 0
        np.testing.assert_allclose(row["logits"], ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_gpu_part_skips_without_cuda(capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from benchmarks import gpu
    assert gpu.measure() == {}
    assert "no GPU" in capsys.readouterr().err


def test_conv_flops_match_the_paper():
    """2 x multiply-adds at 224 against the DPN paper's GFLOPs (MACs) column."""
    from dpn_gluon import variants
    from dpn_gluon.variants import conv_flops
    paper = {"dpn68": 2.3, "dpn92": 6.5, "dpn98": 11.7, "dpn131": 16.0, "dpn107": 18.3}
    for name, gmacs in paper.items():
        assert conv_flops(variants.get_arch(name)) / 2e9 == pytest.approx(gmacs, abs=0.05)
