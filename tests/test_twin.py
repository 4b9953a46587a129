"""The one BN twin (backends.bn_twin / twin_runner): built and run without the global RNG; eval results
do not depend on whether train mode ran first; bench's randomized, folded twin comes from the same place."""

from dataclasses import asdict

import numpy as np
import torch
from conftest import model_manifest

from nfdeploy.check.backends import ExportSource, bn_twin, twin_runner
from nfdeploy.models import create_model

SHAPE = (3, 32, 32)


def _source(tmp_path):
    m = create_model("nf_resnet_c8").eval()
    return ExportSource(model_manifest("nf_resnet_c8", SHAPE, asdict(m.cfg)), m, tmp_path)


def test_twin_leaves_the_global_rng_alone(tmp_path):
    src = _source(tmp_path)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    twin = bn_twin(src)
    x = np.random.default_rng(0).standard_normal((4, *SHAPE)).astype(np.float32)
    for mode in ("train", "eval"):
        twin_runner(twin, mode)(x)
    assert torch.equal(torch.rand(3), expected)
    # Same seed, same twin, whatever the global RNG's state was.
    torch.manual_seed(7)
    again = bn_twin(src)
    assert all(torch.equal(a, b) for a, b in zip(twin.state_dict().values(), again.state_dict().values()))


def test_twin_eval_does_not_depend_on_train_running_first(tmp_path):
    src = _source(tmp_path)
    x = np.random.default_rng(1).standard_normal((8, *SHAPE)).astype(np.float32) * 3 + 1
    fresh = twin_runner(bn_twin(src), "eval")(x)
    twin = bn_twin(src)
    train, ev = twin_runner(twin, "train"), twin_runner(twin, "eval")
    t1 = train(x)
    for _ in range(5):  # running statistics would move towards x's here
        train(x)
    assert np.array_equal(ev(x), fresh)  # exactly: nothing of train mode reached the eval runner
    assert np.array_equal(twin_runner(twin, "eval")(x), fresh)  # nor the twin it was made from
    # Train mode really normalises with the batch's statistics: one sample alone gives other logits.
    assert not np.allclose(train(x[:1]), t1[:1], rtol=1e-3, atol=1e-3)
    assert np.allclose(ev(x[:1]), fresh[:1], rtol=1e-5, atol=1e-5)


def test_randomized_twin_has_the_other_norm(tmp_path):
    src = _source(tmp_path)
    plain, rand = bn_twin(src), bn_twin(src, norm="other", randomized=True)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in rand.modules())  # the export is NF: other = BN
    rm = [m.running_mean for m in rand.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert any(float(v.abs().max()) > 0 for v in rm)  # randomize_ set the statistics (default init is zeros)
