import json
from safetensors.torch import load_file
from tests.test_toy_classifier import _script
def test_x(tmp_path):
    script = _script()
    common = ["--steps", "3", "--batch", "16", "--eval-n", "40", "--threads", "1"]
    assert script.main(common + ["--min-acc", "0.99", "--out", str(tmp_path / "weak")]) == 1
    for run in ("a", "b"):
        assert script.main(common + ["--min-acc", "0", "--out", str(tmp_path / run)]) == 0
    A,B = (load_file(str(tmp_path / r / "classifier.safetensors")) for r in "ab")
    print("AB", [(k, float((A[k].float()-B[k].float()).abs().max())) for k in A if not (A[k]==B[k]).all()][:6])
    assert 0
