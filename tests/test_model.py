"""The three-section network: shapes, attention, fast == reference, gradients, presets, configs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from torch_geometric.data import Batch

from xanes_utils.graphs import build_graph
from xanes_utils.model import ModelConfig, XanesGAT, weighted_batch_norm

TINY = ModelConfig(conv_dims=(16, 12, 10), heads=2, head_dim=8, mlp_dims=(16, 8))


def rocksalt(metal: str, a: float) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [metal, "O"], [[0, 0, 0], [0.5] * 3])


def cluster() -> Structure:
    """FeO4 square in a 30 A box: a padded graph with 4 real neighbours."""
    coords = [[15, 15, 15], [17, 15, 15], [13, 15, 15], [15, 17, 15], [15, 13, 15]]
    return Structure(Lattice.cubic(30.0), ["Fe", "O", "O", "O", "O"], coords, coords_are_cartesian=True)


@pytest.fixture(scope="module")
def batch() -> Batch:
    rng = np.random.default_rng(0)
    graphs = [build_graph(rocksalt(m, a), s, y=rng.random(111))
              for m, a in [("Ni", 4.17), ("Co", 4.26), ("Mn", 4.44)] for s in (0, 4)]
    graphs.append(build_graph(cluster(), 0, y=rng.random(111)))
    # spinel in pymatgen's origin choice 1 (A at 8a 0,0,0; B at 16d 5/8; O at 32e u = 0.3875)
    spinel = Structure.from_spacegroup("Fd-3m", Lattice.cubic(8.4), ["Fe", "Co", "O"],
                                       [[0, 0, 0], [0.625] * 3, [0.3875] * 3])
    graphs.append(build_graph(spinel, 0, y=rng.random(111)))
    return Batch.from_data_list(graphs)


def run(model: XanesGAT, batch: Batch, impl: str, train: bool, seed: int = 1):
    model.train(train)
    torch.manual_seed(seed)  # same dropout mask for both implementations
    return model(batch, return_internals=True, implementation=impl)


def test_output_and_internals_shapes(batch):
    model = XanesGAT(TINY).eval()
    out, internals = model(batch, return_internals=True)
    n = batch.num_graphs
    assert out.shape == (n, 111) and model(batch).shape == (n, 111)
    shapes = {k: tuple(v.shape) for k, v in internals.items() if k != "absorber"}
    assert shapes == {"conv1": (n, 16), "conv2": (n, 12), "conv3": (n, 10), "attention": (n, 16),
                      "mlp1": (n, 16), "mlp2": (n, 8), "attention_weights": (n, 20, 2)}
    assert list(internals)[:6] == ["conv1", "conv2", "conv3", "attention", "mlp1", "mlp2"]
    assert {k: tuple(v.shape) for k, v in internals["absorber"].items()} == {
        "conv1": (n, 16), "conv2": (n, 12), "conv3": (n, 10), "attention": (n, 16)}
    single = model(build_graph(rocksalt("Ni", 4.17), 0))  # a lone Data is batched
    assert torch.allclose(single, out[:1], atol=1e-5)


def test_attention_weights_normalised_over_real_neighbours(batch):
    for impl in ("fast", "reference"):
        _, internals = run(XanesGAT(TINY), batch, impl, train=False)
        att = internals["attention_weights"]
        mask = batch.edge_mask.view(-1, 20)
        assert (att[~mask] == 0).all() and (att[mask] > 0).all()
        assert torch.allclose(att.sum(1), torch.ones(batch.num_graphs, 2), atol=1e-6)
    assert mask[6].sum() == 4  # the padded cluster graph is in the batch


@pytest.mark.parametrize("readout, attention", [("local", "centred"), ("cell", "centred"), ("local", "paper")])
@pytest.mark.parametrize("preset", ["tiny", "cpu", "paper"])
def test_fast_equals_reference_train_and_eval(batch, readout, attention, preset):
    config = {"tiny": TINY, "cpu": ModelConfig.cpu(), "paper": ModelConfig.paper()}[preset]
    torch.manual_seed(0)
    fast = XanesGAT(ModelConfig.from_dict(config.to_dict() | {"readout": readout, "attention": attention}))
    ref = copy.deepcopy(fast)
    for train in (True, True, False):  # two training steps move the running stats, then eval
        out_f, int_f = run(fast, batch, "fast", train)
        out_r, int_r = run(ref, batch, "reference", train)
        assert torch.allclose(out_f, out_r, atol=1e-5, rtol=1e-4)
        for key in ("conv1", "conv2", "conv3", "attention", "mlp1", "mlp2", "attention_weights"):
            assert torch.allclose(int_f[key], int_r[key], atol=1e-4, rtol=1e-4), key
        for key in int_f["absorber"]:
            assert torch.allclose(int_f["absorber"][key], int_r["absorber"][key], atol=1e-4, rtol=1e-4), key
    state_f, state_r = fast.state_dict(), ref.state_dict()
    assert list(state_f) == list(state_r)
    for key in state_f:  # BatchNorm running statistics updated identically
        assert torch.allclose(state_f[key].float(), state_r[key].float(), atol=1e-5), key


def test_readouts_differ_and_state_dict_loads_across_implementations(batch):
    torch.manual_seed(0)
    local = XanesGAT(TINY).eval()
    cell = XanesGAT(ModelConfig.from_dict(TINY.to_dict() | {"readout": "cell", "implementation": "reference"}))
    cell.load_state_dict(local.state_dict())  # same keys whatever the readout or implementation
    assert not torch.allclose(local(batch), cell.eval()(batch))


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_centred_score_survives_a_shared_offset_that_saturates_the_papers(batch, impl):
    """A large offset shared by all of an absorber's scores (here from the key bias) saturates the paper's
    tanh into exactly uniform weights; the centred score ignores it, as the softmax itself would."""
    torch.manual_seed(0)  # float64: the offset cancels to ~1e-12, not to float32's ~1e-4 at these scores
    centred = XanesGAT(TINY).double().eval()
    paper = XanesGAT(ModelConfig.from_dict(TINY.to_dict() | {"attention": "paper"})).double().eval()
    batch = batch.clone()
    batch.x, batch.edge_attr = batch.x.double(), batch.edge_attr.double()
    with torch.no_grad():
        for head in centred.heads:
            head.att.mul_(20.0)  # clearly non-uniform weights (at initialisation they differ by ~2 %)
        paper.load_state_dict(centred.state_dict())
        before = centred(batch, return_internals=True, implementation=impl)[1]["attention_weights"]
        for model in (centred, paper):
            for head in model.heads:
                head.lin_k.bias.fill_(300.0)
    mask = batch.edge_mask.view(-1, 20)
    weights = {name: model(batch, return_internals=True, implementation=impl)[1]["attention_weights"]
               for name, model in (("centred", centred), ("paper", paper))}
    uniform = (1.0 / mask.sum(1, keepdim=True).double()).expand_as(mask)[mask]
    for h in range(TINY.heads):
        assert torch.allclose(weights["paper"][..., h][mask], uniform, atol=1e-6)
        assert (weights["centred"][..., h][mask] / uniform).std() > 0.05
        assert torch.allclose(weights["centred"][..., h], before[..., h], atol=1e-9)


def test_gradients_flow_and_agree(batch):
    grads = {}
    for impl in ("fast", "reference"):
        torch.manual_seed(0)
        model = XanesGAT(TINY)
        out, _ = run(model, batch, impl, train=True)
        torch.nn.functional.l1_loss(out, batch.y).backward()
        grads[impl] = {k: p.grad for k, p in model.named_parameters()}
        missing = [k for k, g in grads[impl].items() if g is None or not torch.isfinite(g).all() or not g.any()]
        assert not missing, f"{impl}: no gradient for {missing}"
    for key, g in grads["fast"].items():
        assert torch.allclose(g, grads["reference"][key], atol=1e-5, rtol=1e-3), key


def test_paper_parameter_count():
    n = XanesGAT(ModelConfig.paper()).n_parameters
    assert 3.0e6 <= n <= 4.5e6
    assert XanesGAT(ModelConfig.cpu()).n_parameters < n / 5


def test_weighted_batch_norm_matches_torch():
    torch.manual_seed(0)
    h = torch.randn(12, 5)
    ours, theirs = torch.nn.BatchNorm1d(5), torch.nn.BatchNorm1d(5)
    for _ in range(2):
        assert torch.allclose(weighted_batch_norm(ours, h, torch.ones(12)), theirs(h), atol=1e-6)
    assert torch.allclose(ours.running_var, theirs.running_var) and torch.allclose(ours.running_mean,
                                                                                   theirs.running_mean)
    # integer weights equal repeated rows
    weight = torch.tensor([2.0] + [1.0] * 11)
    a, b = torch.nn.BatchNorm1d(5), torch.nn.BatchNorm1d(5)
    assert torch.allclose(weighted_batch_norm(a, h, weight)[1:], b(torch.cat([h[:1], h]))[2:], atol=1e-6)
    assert torch.allclose(a.running_var, b.running_var)


def test_config_round_trip_and_validation():
    config = ModelConfig.cpu(readout="cell")
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert ModelConfig.paper().conv_dims == (600, 500, 400) and ModelConfig.paper().heads == 3
    with pytest.raises(ValueError, match="readout"):
        ModelConfig(readout="global")
    with pytest.raises(ValueError, match="implementation"):
        ModelConfig(implementation="turbo")
    with pytest.raises(ValueError, match="attention"):
        ModelConfig(attention="softmax")
    legacy = {k: v for k, v in config.to_dict().items() if k != "attention"}  # checkpoints before the option
    assert ModelConfig.from_dict(legacy).attention == "paper" and config.attention == "centred"
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({"conv_dim": [1]})


def test_angular_and_neighbour_options_fast_equals_reference():
    rng = np.random.default_rng(1)
    structures = [rocksalt("Ni", 4.17), cluster(),
                  Structure.from_spacegroup("F-43m", Lattice.cubic(5.4), ["Zn", "S"], [[0, 0, 0], [0.25] * 3])]
    graphs = [build_graph(s, 0, y=rng.random(111), n_neighbours=32) for s in structures]
    batch32 = Batch.from_data_list(graphs)
    config = ModelConfig.from_dict(TINY.to_dict() | {"angular": True, "neighbours": 32})
    torch.manual_seed(0)
    fast = XanesGAT(config)
    ref = copy.deepcopy(fast)
    assert fast.convs[0].lin_edge.in_features == 65 + 9
    for train in (True, False):
        out_f, int_f = run(fast, batch32, "fast", train)
        out_r, int_r = run(ref, batch32, "reference", train)
        assert out_f.shape == (3, 111)
        assert torch.allclose(out_f, out_r, atol=1e-5, rtol=1e-4)
        assert int_f["attention_weights"].shape == (3, 32, 2)
    # the angular features reach the output: zeroing them changes the prediction
    flat = batch32.clone()
    flat.edge_angular = torch.zeros_like(flat.edge_angular)
    assert not torch.allclose(fast.eval()(batch32), fast(flat))


def test_graphs_with_the_wrong_number_of_slots_are_refused(batch):
    model = XanesGAT(ModelConfig.from_dict(TINY.to_dict() | {"neighbours": 32}))
    with pytest.raises(ValueError, match="32 neighbour slots"):
        model(batch)


def test_weighted_batch_norm_gradients_match_torch():
    """The hand-written backward of the weighted BatchNorm against autograd through torch's BatchNorm1d:
    weights all ones, and integer weights as repeated rows."""
    torch.manual_seed(0)
    h = torch.randn(9, 4, dtype=torch.float64)
    grad = torch.randn(9, 4, dtype=torch.float64)
    weight = torch.tensor([3.0, 1, 2, 1, 1, 1, 4, 1, 1], dtype=torch.float64)
    repeats = weight.long()
    for w in (torch.ones(9, dtype=torch.float64), weight):
        ours, theirs = torch.nn.BatchNorm1d(4).double(), torch.nn.BatchNorm1d(4).double()
        with torch.no_grad():
            for bn in (ours, theirs):
                bn.weight.copy_(torch.linspace(0.5, 2.0, 4))
                bn.bias.copy_(torch.linspace(-1.0, 1.0, 4))
        x_ours, x_theirs = h.clone().requires_grad_(), h.clone().requires_grad_()
        out = weighted_batch_norm(ours, x_ours, w)
        # the loss weights each row by its weight in ours; in theirs a row repeated w times appears w times
        (out * grad * w.unsqueeze(1)).sum().backward()
        full = theirs(x_theirs.repeat_interleave(repeats if w is weight else torch.ones_like(repeats), 0))
        (full * grad.repeat_interleave(repeats if w is weight else torch.ones_like(repeats), 0)).sum().backward()
        assert torch.allclose(x_ours.grad, x_theirs.grad, atol=1e-10)
        assert torch.allclose(ours.weight.grad, theirs.weight.grad, atol=1e-10)
        assert torch.allclose(ours.bias.grad, theirs.bias.grad, atol=1e-10)
        assert torch.allclose(ours.running_var, theirs.running_var, atol=1e-12)


def test_plain_operations_for_torch_compile_equal_the_hand_written_backward(batch, monkeypatch):
    """Under torch.compile the fast path runs plain tensor operations instead of its autograd.Functions:
    same outputs, gradients and running statistics (checked here in eager mode)."""
    results = []
    for compiling in (False, True):
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiling)
        torch.manual_seed(0)
        model = XanesGAT(ModelConfig.from_dict(TINY.to_dict() | {"readout": "cell"}))
        out, internals = run(model, batch, "fast", train=True)
        (torch.nn.functional.l1_loss(out, batch.y) + internals["attention_weights"].square().sum()).backward()
        results.append((out, internals["attention_weights"], {k: p.grad for k, p in model.named_parameters()},
                        {k: v.clone() for k, v in model.state_dict().items()}))
    (out_a, att_a, grad_a, state_a), (out_b, att_b, grad_b, state_b) = results
    assert torch.allclose(out_a, out_b, atol=1e-6) and torch.allclose(att_a, att_b, atol=1e-7)
    for key in grad_a:
        assert torch.allclose(grad_a[key], grad_b[key], atol=1e-6, rtol=1e-4), key
    for key in state_a:
        assert torch.allclose(state_a[key].float(), state_b[key].float(), atol=1e-6), key


def test_training_with_compile_falls_back_to_eager_when_compilation_fails(batch, monkeypatch, caplog):
    """TrainConfig(compile=True) wraps the model in torch.compile; a compiler failure is logged and training
    goes on in eager mode (the compiled path itself is timed in benchmarks/train_speed.py, not tested)."""
    from xanes_utils.train import TrainConfig, train

    def failing(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: failing)
    graphs = batch.to_data_list()
    with caplog.at_level("WARNING", logger="xanes_utils.train"):
        model, history = train(graphs, graphs[:2], TINY, TrainConfig(epochs=2, batch_size=4, compile=True),
                               progress=False)
    assert len(history.train_loss) == 2 and np.isfinite(history.train_loss).all()
    assert "torch.compile failed (RuntimeError: no compiler here)" in caplog.text


def test_compiled_prediction_equals_eager(batch):
    """predict_graphs(compile=True) runs the model through torch.compile: the same spectra as eager mode."""
    from xanes_utils.train import predict_graphs

    torch.manual_seed(3)
    model = XanesGAT(TINY).eval()
    graphs = batch.to_data_list()
    eager = predict_graphs(model, graphs, batch_size=5)
    np.testing.assert_allclose(predict_graphs(model, graphs, batch_size=5, compile=True), eager, atol=1e-5, rtol=1e-4)


def test_compiled_ensemble_prediction_falls_back_to_eager(batch, monkeypatch, caplog):
    """A compiler failure in predict_ensemble(compile=True) is logged and prediction goes on in eager mode, with
    the same spectra, spread and domain scores."""
    from xanes_utils.ensemble import Ensemble, predict_ensemble

    torch.manual_seed(4)
    ensemble = Ensemble([XanesGAT(TINY), XanesGAT(TINY)]).eval()
    graphs = batch.to_data_list()
    eager = predict_ensemble(ensemble, graphs)

    def failing(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: failing)
    with caplog.at_level("WARNING", logger="xanes_utils.train"):
        fallback = predict_ensemble(ensemble, graphs, compile=True)
    assert "torch.compile failed (RuntimeError: no compiler here); running in eager mode" in caplog.text
    np.testing.assert_array_equal(fallback.mu, eager.mu)
    np.testing.assert_array_equal(fallback.mu_std, eager.mu_std)


def test_eval_in_chunks_equals_one_pass(batch, monkeypatch):
    """In eval mode the fast path computes large batches in chunks of graphs: same outputs and internals."""
    import xanes_utils.model as model_module

    torch.manual_seed(0)
    model = XanesGAT(TINY)
    run(model, batch, "fast", train=True)  # running statistics away from their initial values
    whole = run(model, batch, "fast", train=False)
    monkeypatch.setattr(model_module, "EVAL_CHUNK", 3)
    chunked = run(model, batch, "fast", train=False)
    assert torch.allclose(whole[0], chunked[0], atol=1e-6)
    for key in ("conv1", "attention", "mlp2", "attention_weights"):
        assert torch.allclose(whole[1][key], chunked[1][key], atol=1e-6), key
    assert torch.allclose(whole[1]["absorber"]["conv3"], chunked[1]["absorber"]["conv3"], atol=1e-6)
