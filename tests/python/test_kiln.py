"""test_kiln.py — the Python package (python/kiln) on real PyTorch modules.

Goes through the seed's examples (torch_neuronx lazy_load / async_load / DataParallel)
line by line with kiln's names, then data-parallel splitting, nested inputs, errors and
handle lifetimes. Every output is compared with PyTorch's within 1e-4 relative (max abs
difference / max abs reference).

Run: /usr/bin/python3 -m pytest -q tests/python   (ctest: python_tests)
"""
import gc
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

import kiln

TOL = 1e-4
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
needs_two_cores = pytest.mark.skipif(kiln.num_cores() < 2, reason="needs 2 visible cores")


def rel_err(got, ref):
    got = got.detach().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    scale = float(np.abs(ref).max()) or 1.0
    return float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max()) / scale


def assert_close(got, ref):
    assert rel_err(got, ref) <= TOL


# -- modules ---------------------------------------------------------------------------------

class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


class MLP(nn.Module):
    def __init__(self, d_in=32, d_hidden=64, d_out=8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))

    def forward(self, x):
        return self.net(x)


class Nested(nn.Module):
    """Nested inputs and outputs: forward(x, {'scale': s, 'pair': (a, b)})."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x, extra):
        a, b = extra["pair"]
        y = self.fc(x) * extra["scale"]
        return {"y": y, "parts": (a + b, a * b)}


class Ignores(nn.Module):
    """Uses only its first and third inputs: the ONNX exporter drops the second."""

    def forward(self, a, unused, c):
        return a * 2 + c


class Embed(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 8)

    def forward(self, ids):
        return self.emb(ids).sum(1)


def fresh(cls, *args):
    torch.manual_seed(0)
    return cls(*args).eval()


@pytest.fixture(scope="module")
def cnn():
    return fresh(SmallCNN), torch.randn(2, 3, 16, 16)


@pytest.fixture(scope="module")
def mlp():
    return fresh(MLP), torch.randn(2, 32)


@pytest.fixture
def work(tmp_path):
    return tmp_path


def torch_ref(module, *inputs):
    with torch.no_grad():
        return module(*inputs)


# -- trace -----------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["cnn", "mlp"])
def test_trace_matches_torch(which, request):
    model, x = request.getfixturevalue(which)
    neuron_model = kiln.trace(model, x)
    assert neuron_model.state == "UNLOADED"
    assert not neuron_model.is_lazy and not neuron_model.is_async
    assert [s.name for s in neuron_model.inputs] == ["input_0"]
    assert neuron_model.inputs[0].dtype == "float32"
    assert neuron_model.inputs[0].shape == tuple(x.shape)
    ref = torch_ref(model, x)
    assert neuron_model.outputs == [kiln.TensorSpec("output_0", "float32", tuple(ref.shape))]
    out = neuron_model(x)
    assert isinstance(out, torch.Tensor)  # torch in, torch out
    assert_close(out, ref)
    out_np = neuron_model(x.numpy())
    assert isinstance(out_np, np.ndarray)  # NumPy in, NumPy out
    assert_close(out_np, ref)
    neuron_model.close()


def test_trace_resnet18_lazy_round_trip(work):
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.rand(1, 3, 224, 224)
    neuron_model = kiln.trace(model, x)
    kiln.lazy_load(neuron_model)
    kiln.save(neuron_model, work / "resnet18")
    neuron_model.close()
    neuron_model = kiln.load(work / "resnet18")
    assert neuron_model.placements() == 0
    assert_close(neuron_model(x), torch_ref(model, x))
    assert neuron_model.placements() == 1
    neuron_model.close()


def test_trace_keeps_training_mode(mlp):
    model = MLP()
    assert model.training
    kiln.trace(model, torch.randn(2, 32)).close()
    assert model.training


@pytest.mark.parametrize("how", ["script", "trace"])
def test_trace_torchscript_module(how, mlp):
    model, x = mlp
    ts = torch.jit.script(model) if how == "script" else torch.jit.trace(model, x)
    assert_close(kiln.trace(ts, x)(x), torch_ref(model, x))
    with pytest.raises(TypeError, match="TorchScript"):
        kiln.trace(ts, ((x,),))


def test_trace_from_onnx_file(work, mlp):
    model, x = mlp
    torch.onnx.export(model, (x,), str(work / "mlp.onnx"), opset_version=17,
                      input_names=["features"], output_names=["logits"])
    neuron_model = kiln.trace(str(work / "mlp.onnx"), x.numpy())
    assert neuron_model.inputs[0].name == "features"
    assert neuron_model.outputs[0].name == "logits"
    out = neuron_model(x.numpy())
    assert isinstance(out, np.ndarray)
    assert_close(out, torch_ref(model, x))


def test_trace_several_outputs_and_dtypes():
    model = fresh(Embed)
    ids = torch.randint(0, 50, (3, 5))
    neuron_model = kiln.trace(model, ids)
    assert neuron_model.inputs[0].dtype == "int64"
    assert_close(neuron_model(ids), torch_ref(model, ids))
    # int32 ids are cast to the model's int64 (same kind)
    assert_close(neuron_model(ids.numpy().astype(np.int32)), torch_ref(model, ids))


class CastBack(nn.Module):
    def forward(self, x):
        return x.float() * 2, (x.float() + 1).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.int8,
                                   torch.uint8, torch.int32, torch.int64, torch.bool])
def test_dtypes_in_and_out(dtype):
    x = (torch.randn(2, 3) * 4).to(dtype)
    neuron_model = kiln.trace(CastBack(), x)
    want = "bfloat16" if dtype == torch.bfloat16 else str(dtype).replace("torch.", "")
    assert neuron_model.inputs[0].dtype == want and neuron_model.outputs[1].dtype == want
    a, b = neuron_model(x)
    ra, rb = CastBack()(x)
    assert b.dtype == dtype and torch.equal(a, ra) and torch.equal(b, rb)
    if dtype != torch.bfloat16:                             # NumPy has no bfloat16
        a, b = neuron_model(x.numpy())
        assert b.dtype == x.numpy().dtype and np.array_equal(b, rb.numpy())


def test_inputs_cast_and_made_contiguous(mlp):
    model, x = mlp
    neuron_model = kiln.trace(model, x)
    ref = torch_ref(model, x)
    assert_close(neuron_model(x.double()), ref)              # float64 -> float32
    xt = np.asfortranarray(x.numpy())                        # not C-contiguous
    assert_close(neuron_model(xt), ref)
    strided = torch.cat([x, x], 1)[:, ::2]                   # a strided view
    assert_close(neuron_model(strided), torch_ref(model, strided))


def test_unused_inputs_are_accepted():
    a, b, c = torch.randn(2, 3), torch.randn(4), torch.randn(2, 3)
    neuron_model = kiln.trace(Ignores(), (a, b, c))
    assert len(neuron_model.inputs) == 2
    assert_close(neuron_model(a, b, c), a * 2 + c)


# -- the seed: lazy_load ---------------------------------------------------------------------

def test_seed_lazy_load(work, cnn):
    model, inputs = cnn
    # >>> neuron_model = torch_neuronx.trace(model, inputs)
    neuron_model = kiln.trace(model, inputs)
    # >>> torch_neuronx.lazy_load(neuron_model)
    kiln.lazy_load(neuron_model)
    assert neuron_model.is_lazy
    # >>> torch.jit.save(neuron_model, "my_model")
    kiln.save(neuron_model, work / "my_model")
    neuron_model.close()
    # >>> neuron_model = torch.jit.load("my_model")  # not loaded until it is run
    neuron_model = kiln.load(work / "my_model")
    assert neuron_model.is_lazy and not neuron_model.is_async
    assert neuron_model.state == "UNLOADED"
    assert neuron_model.placements() == 0
    assert neuron_model.load_report()["placements"] == 0
    out = neuron_model(inputs)                      # the first call places it, once
    assert neuron_model.state == "LOADED"
    assert neuron_model.placements() == 1
    assert_close(out, torch_ref(model, inputs))
    neuron_model(inputs)
    assert neuron_model.placements() == 1
    report = neuron_model.load_report()
    assert report["placements"] == 1 and report["core"] >= 0
    assert neuron_model.placements(report["core"]) == 1
    neuron_model.close()


def test_lazy_load_can_be_turned_off(work, mlp):
    model, x = mlp
    neuron_model = kiln.trace(model, x)
    kiln.lazy_load(neuron_model)
    kiln.lazy_load(neuron_model, enable_lazy_load=False)
    assert not neuron_model.is_lazy
    kiln.save(neuron_model, work / "m.kiln")
    with kiln.load(work / "m.kiln") as loaded:       # eager: placed before load returns
        assert loaded.state == "LOADED"
        assert loaded.placements() == 1
        assert_close(loaded(x), torch_ref(model, x))


# -- the seed: async_load --------------------------------------------------------------------

def test_seed_async_load(work, cnn, mlp):
    model1, input1 = cnn
    model2, input2 = mlp
    # >>> neuron_model1 = torch_neuronx.trace(model1, inputs1)
    # >>> torch_neuronx.async_load(neuron_model1)
    # >>> torch.jit.save(neuron_model1, "my_model1")
    neuron_model1 = kiln.trace(model1, input1)
    kiln.async_load(neuron_model1)
    kiln.save(neuron_model1, work / "my_model1")
    neuron_model2 = kiln.trace(model2, input2)
    kiln.async_load(neuron_model2)
    kiln.save(neuron_model2, work / "my_model2")
    # >>> neuron_model1 = torch.jit.load("my_model1")  # starts loading in the background
    # >>> neuron_model2 = torch.jit.load("my_model2")  # both load concurrently
    neuron_model1 = kiln.load(work / "my_model1")
    neuron_model2 = kiln.load(work / "my_model2")
    for m in (neuron_model1, neuron_model2):
        assert m.is_async and not m.is_lazy
        assert m.state in ("LOADING", "LOADED")
    # >>> output1 = neuron_model1(input1)  # blocks until its load finishes
    # >>> output2 = neuron_model2(input2)
    output1 = neuron_model1(input1)
    output2 = neuron_model2(input2)
    assert_close(output1, torch_ref(model1, input1))
    assert_close(output2, torch_ref(model2, input2))
    for m in (neuron_model1, neuron_model2):
        m.wait()
        assert m.state == "LOADED"
        assert m.placements() == 1
        r = m.load_report()
        assert r["total_ms"] > 0 and r["file_bytes"] > 0 and r["weight_bytes"] > 0
        m.close()


def test_async_load_then_wait(work, cnn):
    model, x = cnn
    neuron_model = kiln.trace(model, x)
    kiln.async_load(neuron_model)
    kiln.save(neuron_model, work / "a.kiln")
    neuron_model = kiln.load(work / "a.kiln")        # returns at once
    neuron_model.wait()
    assert neuron_model.state == "LOADED"
    assert neuron_model.placements() == 1
    assert_close(neuron_model(x), torch_ref(model, x))
    neuron_model.close()


def test_async_load_many_concurrently(work, mlp):
    model, x = mlp
    neuron_model = kiln.trace(model, x)
    kiln.async_load(neuron_model)
    kiln.save(neuron_model, work / "a.kiln")
    models = [kiln.load(work / "a.kiln") for _ in range(6)]
    ref = torch_ref(model, x)
    for m in models:
        assert_close(m(x), ref)
    for m in models:
        m.close()


# -- the seed: lazy and async together -------------------------------------------------------

def test_seed_lazy_and_async(work, cnn):
    model, inputs = cnn
    # >>> neuron_model = torch_neuronx.trace(model, inputs)
    # >>> torch_neuronx.lazy_load(neuron_model)
    # >>> torch_neuronx.async_load(neuron_model)
    # >>> torch.jit.save(neuron_model, "my_model")
    neuron_model = kiln.trace(model, inputs)
    kiln.lazy_load(neuron_model)
    kiln.async_load(neuron_model)
    kiln.save(neuron_model, work / "my_model")
    neuron_model.close()
    neuron_model = kiln.load(work / "my_model")
    assert neuron_model.is_lazy and neuron_model.is_async
    assert neuron_model.state == "UNLOADED"            # deferred ...
    assert neuron_model.placements() == 0
    assert_close(neuron_model(inputs), torch_ref(model, inputs))  # ... then placed, waited for
    assert neuron_model.state == "LOADED"
    assert neuron_model.placements() == 1
    neuron_model.close()


def test_flags_on_a_loaded_model_are_a_state_error(work, mlp):
    model, x = mlp
    neuron_model = kiln.trace(model, x)
    kiln.save(neuron_model, work / "m.kiln")
    loaded = kiln.load(work / "m.kiln")
    with pytest.raises(kiln.KilnStateError):
        kiln.lazy_load(loaded)
    with pytest.raises(kiln.KilnStateError):
        kiln.async_load(loaded)
    loaded.close()


# -- save / load -----------------------------------------------------------------------------

def test_save_load_round_trip(work, cnn):
    model, x = cnn
    neuron_model = kiln.trace(model, x)
    traced_out = neuron_model(x)
    kiln.save(neuron_model, str(work / "rt.kiln"))
    loaded = kiln.load(str(work / "rt.kiln"))
    assert loaded.inputs == neuron_model.inputs
    assert loaded.outputs == neuron_model.outputs
    assert not loaded.is_lazy and not loaded.is_async
    assert loaded.state == "LOADED" and loaded.placements() == 1
    out = loaded(x)
    assert_close(out, traced_out)
    assert_close(out, torch_ref(model, x))
    # a loaded model saves again; the copy loads and runs the same
    kiln.save(loaded, work / "rt2.kiln")
    with kiln.load(work / "rt2.kiln") as again:
        assert_close(again(x), traced_out)
    loaded.close()
    neuron_model.close()


def test_nested_structure_survives_save_load(work):
    model = fresh(Nested)
    x = torch.randn(3, 6)
    extra = {"scale": torch.randn(3, 4), "pair": (torch.randn(3, 2), torch.randn(3, 2))}
    neuron_model = kiln.trace(model, (x, extra))
    kiln.save(neuron_model, work / "n.kiln")
    assert os.path.exists(str(work / "n.kiln") + ".pytree.json")
    loaded = kiln.load(work / "n.kiln")
    out = loaded(x, extra)
    ref = torch_ref(model, x, extra)
    assert set(out) == {"y", "parts"} and isinstance(out["parts"], tuple)
    assert_close(out["y"], ref["y"])
    assert_close(out["parts"][1], ref["parts"][1])
    loaded.close()
    # saving a plain model at the same path removes the stale structure file
    kiln.save(kiln.trace(fresh(MLP), torch.randn(2, 32)), work / "n.kiln")
    assert not os.path.exists(str(work / "n.kiln") + ".pytree.json")


def test_damaged_structure_file_is_a_format_error(work):
    model = fresh(Nested)
    x = torch.randn(3, 6)
    extra = {"scale": torch.randn(3, 4), "pair": (torch.randn(3, 2), torch.randn(3, 2))}
    kiln.save(kiln.trace(model, (x, extra)), work / "n.kiln")
    with open(str(work / "n.kiln") + ".pytree.json", "w") as f:
        f.write('{"kiln_python": 1, "inputs": ["tuple", ["T"]]}')
    with pytest.raises(kiln.KilnFormatError, match="pytree.json"):
        kiln.load(work / "n.kiln")


# -- DataParallel ----------------------------------------------------------------------------

def lazy_artifact(work, model, x, name="dp.kiln", is_async=False):
    neuron_model = kiln.trace(model, x)
    kiln.lazy_load(neuron_model)
    kiln.async_load(neuron_model, is_async)
    kiln.save(neuron_model, work / name)
    neuron_model.close()
    return work / name


@needs_two_cores
@pytest.mark.parametrize("is_async", [False, True])
def test_data_parallel_places_a_lazy_model_once_per_core(work, cnn, is_async):
    model, x = cnn
    neuron_model = kiln.load(lazy_artifact(work, model, x, is_async=is_async))
    assert neuron_model.placements() == 0
    dp = kiln.DataParallel(neuron_model, device_ids=[0, 1])
    if is_async:
        neuron_model.wait()
    assert neuron_model.placements(0) == 1
    assert neuron_model.placements(1) == 1
    assert neuron_model.placements() == 2
    batch = torch.randn(4, 3, 16, 16)                   # 2 per core
    assert_close(dp(batch), torch_ref(model, batch))
    dp(batch)
    neuron_model(x)                                     # the plain call uses a replica too
    assert neuron_model.placements() == 2
    dp.close()
    neuron_model.close()


@needs_two_cores
def test_data_parallel_keeps_an_existing_replica(work, mlp):
    model, x = mlp
    neuron_model = kiln.trace(model, x)
    kiln.save(neuron_model, work / "eager.kiln")
    loaded = kiln.load(work / "eager.kiln")             # eager: placed on one core
    assert loaded.placements() == 1
    with kiln.DataParallel(loaded, [0, 1]) as dp:
        assert loaded.placements() == 2                 # the other core only
        assert loaded.placements(0) == 1 and loaded.placements(1) == 1
        batch = torch.randn(4, 32)
        assert_close(dp(batch), torch_ref(model, batch))
    loaded.close()


def test_data_parallel_dynamic_batching_odd_sizes(work, cnn):
    model, x = cnn                                        # traced for batch 2
    neuron_model = kiln.load(lazy_artifact(work, model, x))
    dp = kiln.DataParallel(neuron_model)                  # every visible core
    assert dp.dynamic_batching and dp.device_ids == list(range(kiln.num_cores()))
    for n in (1, 3, 5, 7):
        batch = torch.randn(n, 3, 16, 16)
        out = dp(batch)
        assert tuple(out.shape) == (n, 10)
        assert_close(out, torch_ref(model, batch))
    out = dp(torch.randn(5, 3, 16, 16).numpy())
    assert isinstance(out, np.ndarray) and out.shape == (5, 10)
    dp.close()
    neuron_model.close()


def test_data_parallel_without_dynamic_batching(work, mlp):
    model, x = mlp                                        # traced for batch 2
    neuron_model = kiln.load(lazy_artifact(work, model, x))
    n = kiln.num_cores()
    dp = kiln.DataParallel(neuron_model)
    odd = torch.randn(2 * n + 1, 32)
    assert_close(dp(odd), torch_ref(model, odd))          # dynamic batching on: any size
    dp.disable_dynamic_batching()
    assert not dp.dynamic_batching
    with pytest.raises(kiln.KilnShapeError):
        dp(torch.randn(2 * n + 1, 32))
    batch = torch.randn(2 * n, 32)                        # exactly traced batch x cores
    assert_close(dp(batch), torch_ref(model, batch))
    dp.close()
    dp2 = kiln.DataParallel(neuron_model, set_dynamic_batching=False)
    with pytest.raises(kiln.KilnShapeError, match="dynamic batching"):
        dp2(torch.randn(3, 32))
    dp2.close()
    neuron_model.close()


class PerPosition(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):                                 # [B, S, 8] -> [B, S, 4]
        return torch.tanh(self.fc(x))


def test_data_parallel_along_dim_1(work):
    model = fresh(PerPosition)
    x = torch.randn(1, 2, 8)
    neuron_model = kiln.trace(model, x)
    n = kiln.num_cores()
    dp = kiln.DataParallel(neuron_model, dim=1)           # dynamic batching off for dim 1
    assert not dp.dynamic_batching
    batch = torch.randn(1, 2 * n, 8)
    out = dp(batch)
    assert tuple(out.shape) == (1, 2 * n, 4)
    assert_close(out, torch_ref(model, batch))
    with pytest.raises(kiln.KilnShapeError):
        dp(torch.randn(1, 2 * n + 1, 8))
    dp.close()
    with pytest.raises(kiln.KilnArgError, match="dim 0"):  # asked for explicitly: refused
        kiln.DataParallel(neuron_model, dim=1, set_dynamic_batching=True)
    with pytest.raises(kiln.KilnArgError):
        kiln.DataParallel(neuron_model, dim=3)
    neuron_model.close()


def test_data_parallel_nested_inputs(work):
    model = fresh(Nested)
    x = torch.randn(2, 6)
    extra = {"scale": torch.randn(2, 4), "pair": (torch.randn(2, 2), torch.randn(2, 2))}
    neuron_model = kiln.trace(model, (x, extra))
    dp = kiln.DataParallel(neuron_model)
    bx = torch.randn(5, 6)
    bextra = {"pair": [torch.randn(5, 2), torch.randn(5, 2)], "scale": torch.randn(5, 4)}
    out = dp(bx, bextra)                                   # key order and list/tuple free
    ref = torch_ref(model, bx, bextra)
    assert_close(out["y"], ref["y"])
    assert_close(out["parts"][0], ref["parts"][0])
    assert_close(out["parts"][1], ref["parts"][1])
    with pytest.raises(TypeError, match=r"argument 1\['scale'\]"):
        dp(bx, {"scale": 2.0, "pair": bextra["pair"]})
    with pytest.raises(TypeError, match=r"argument 1\['pair'\]\[1\]"):
        dp(bx, {"scale": bextra["scale"], "pair": (bextra["pair"][0], "nope")})
    dp.close()
    neuron_model.close()


def test_data_parallel_bad_cores(mlp):
    model, x = mlp
    neuron_model = kiln.trace(model, x)
    with pytest.raises(kiln.KilnCoreError):
        kiln.DataParallel(neuron_model, device_ids=[kiln.num_cores() + 5])
    with pytest.raises(TypeError, match="device_ids"):
        kiln.DataParallel(neuron_model, device_ids=["nc:0"])
    with pytest.raises(TypeError):
        kiln.DataParallel(neuron_model.close, device_ids=[0])
    neuron_model.close()


# -- nested inputs ---------------------------------------------------------------------------

def test_nested_tuple_dict_inputs():
    model = fresh(Nested)
    x = torch.randn(3, 6)
    extra = {"scale": torch.randn(3, 4), "pair": (torch.randn(3, 2), torch.randn(3, 2))}
    neuron_model = kiln.trace(model, (x, extra))
    assert len(neuron_model.inputs) == 4
    out = neuron_model(x, extra)
    ref = torch_ref(model, x, extra)
    assert_close(out["y"], ref["y"])
    assert_close(out["parts"][0], ref["parts"][0])
    # NumPy leaves, other key order
    np_extra = {"pair": (extra["pair"][0].numpy(), extra["pair"][1].numpy()),
                "scale": extra["scale"].numpy()}
    out = neuron_model(x.numpy(), np_extra)
    assert isinstance(out["y"], np.ndarray)
    assert_close(out["y"], ref["y"])


def test_non_tensor_leaf_is_a_type_error():
    model = fresh(Nested)
    x = torch.randn(3, 6)
    extra = {"scale": torch.randn(3, 4), "pair": (torch.randn(3, 2), torch.randn(3, 2))}
    neuron_model = kiln.trace(model, (x, extra))
    with pytest.raises(TypeError, match=r"argument 1\['scale'\].*float"):
        neuron_model(x, {"scale": 1.5, "pair": extra["pair"]})
    with pytest.raises(TypeError, match=r"argument 0"):
        neuron_model("x", extra)
    with pytest.raises(TypeError, match=r"example_inputs\[1\]\['scale'\]"):
        kiln.trace(model, (x, {"scale": 1.5, "pair": extra["pair"]}))
    with pytest.raises(kiln.KilnShapeError, match="keys"):
        neuron_model(x, {"scale": extra["scale"]})
    with pytest.raises(kiln.KilnShapeError, match="argument"):
        neuron_model(x)


# -- errors ----------------------------------------------------------------------------------

def test_error_classes_match_status_codes():
    classes = [kiln.KilnArgError, kiln.KilnIOError, kiln.KilnFormatError,
               kiln.KilnUnsupportedError, kiln.KilnShapeError, kiln.KilnNoMemError,
               kiln.KilnCoreError, kiln.KilnLoadError, kiln.KilnStateError,
               kiln.KilnInternalError]
    from kiln import _lib, errors
    for i, cls in enumerate(classes, start=1):
        assert cls.status == i
        assert _lib.status_name(i) == cls.status_name
        e = errors.error_for(i, "msg")
        assert type(e) is cls and isinstance(e, kiln.KilnError) and str(e) == "msg"
    assert issubclass(kiln.KilnIOError, OSError)
    assert issubclass(kiln.KilnShapeError, ValueError)
    assert issubclass(kiln.KilnNoMemError, MemoryError)
    assert issubclass(kiln.KilnUnsupportedError, NotImplementedError)
    assert issubclass(kiln.KilnLoadError, RuntimeError)


def test_bad_path_is_an_io_error(work):
    with pytest.raises(kiln.KilnIOError, match="no-such.kiln") as e:
        kiln.load(work / "no-such.kiln")
    assert isinstance(e.value, OSError)
    with pytest.raises(kiln.KilnIOError):
        kiln.trace(str(work / "no-such.onnx"), np.zeros((1, 3), np.float32))


def test_not_onnx_is_a_format_error(work):
    path = work / "junk.onnx"
    path.write_bytes(b"this is not a protobuf\xff\xff\xff")
    with pytest.raises(kiln.KilnFormatError, match="junk.onnx"):
        kiln.trace(str(path), np.zeros((1, 3), np.float32))
    with pytest.raises(kiln.KilnFormatError):
        kiln.load(path)                                    # not an artifact either


def test_damaged_artifact(work, mlp):
    model, x = mlp
    neuron_model = kiln.trace(model, x)
    kiln.lazy_load(neuron_model)
    kiln.save(neuron_model, work / "ok.kiln")
    data = (work / "ok.kiln").read_bytes()
    (work / "short.kiln").write_bytes(data[: len(data) // 3])
    with pytest.raises(kiln.KilnFormatError):
        kiln.load(work / "short.kiln")
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0xFF                        # in the weights
    (work / "bad.kiln").write_bytes(bytes(damaged))
    try:
        m = kiln.load(work / "bad.kiln")                    # lazy: weights checked at placement
    except kiln.KilnFormatError:
        return
    with pytest.raises(kiln.KilnLoadError, match="checksum"):
        m(x)
    assert m.state == "FAILED"
    with pytest.raises(kiln.KilnLoadError):
        m.wait()
    m.close()


def test_wrong_shape_dtype_count_are_shape_errors(mlp):
    model, x = mlp
    neuron_model = kiln.trace(model, x)
    with pytest.raises(kiln.KilnShapeError, match="input_0") as e:
        neuron_model(torch.randn(3, 32))
    assert isinstance(e.value, ValueError)
    with pytest.raises(kiln.KilnShapeError):
        neuron_model(torch.randn(2, 32, 1))
    with pytest.raises(kiln.KilnShapeError):
        neuron_model(x, x)
    with pytest.raises(kiln.KilnShapeError):
        neuron_model()
    emb = kiln.trace(fresh(Embed), torch.randint(0, 50, (3, 5)))
    with pytest.raises(kiln.KilnShapeError, match="i64"):
        emb(torch.randn(3, 5))                              # float for int64: not cast
    with pytest.raises(kiln.KilnShapeError):
        emb(np.zeros((3, 5), np.complex64))


def test_unsupported_op(work):
    class NonZero(nn.Module):
        def forward(self, x):
            return torch.nonzero(x)
    with pytest.raises(kiln.KilnUnsupportedError, match="NonZero"):
        kiln.trace(NonZero(), torch.randn(3, 4))


def test_bad_arguments():
    with pytest.raises(TypeError):
        kiln.trace(42, torch.randn(1))
    with pytest.raises(TypeError):
        kiln.lazy_load("not a model")
    with pytest.raises(TypeError):
        kiln.save(object(), "x.kiln")


def test_library_not_found_is_an_import_error(work):
    env = dict(os.environ, KILN_LIBRARY=str(work / "nope" / "libkiln.so"),
               PYTHONPATH=os.path.join(REPO, "python"))
    r = subprocess.run([sys.executable, "-c", "import kiln"], env=env, capture_output=True,
                       text=True, cwd=str(work),
                       timeout=120)
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "KILN_LIBRARY" in r.stderr


# -- lifetimes and threads -------------------------------------------------------------------

def test_close_and_context_manager(mlp):
    model, x = mlp
    with kiln.trace(model, x) as neuron_model:
        neuron_model(x)
    assert neuron_model.closed
    with pytest.raises(kiln.KilnStateError):
        neuron_model(x)
    with pytest.raises(kiln.KilnStateError):
        neuron_model.state
    neuron_model.close()                                    # twice: nothing
    assert "closed" in repr(neuron_model)


def test_closing_the_model_closes_its_data_parallel(mlp):
    model, x = mlp
    neuron_model = kiln.trace(model, x)
    dp = kiln.DataParallel(neuron_model)
    neuron_model.close()
    with pytest.raises(kiln.KilnStateError):
        dp(x)
    dp.close()
    with pytest.raises(kiln.KilnStateError):
        kiln.DataParallel(neuron_model)


def test_garbage_collection_in_any_order(mlp, work):
    model, x = mlp
    kiln.async_load(m0 := kiln.trace(model, x))
    kiln.save(m0, work / "gc.kiln")
    for _ in range(3):
        m = kiln.load(work / "gc.kiln")                     # possibly still loading
        dp = kiln.DataParallel(m)
        holder = {"m": m, "dp": dp}
        holder["self"] = holder                              # a cycle: collected by gc
        del m, dp, holder
        gc.collect()
    m = kiln.trace(model, x)
    dp = kiln.DataParallel(m)
    del m                                                   # dp keeps the model alive
    assert_close(dp(x), torch_ref(model, x))
    del dp
    gc.collect()


def test_many_threads_call_one_model(cnn):
    model, x = cnn
    neuron_model = kiln.trace(model, x)
    inputs = [torch.randn(2, 3, 16, 16) for _ in range(8)]
    refs = [torch_ref(model, t) for t in inputs]
    results = [None] * len(inputs)

    def run(i):
        for _ in range(3):
            results[i] = neuron_model(inputs[i])
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, ref in zip(results, refs):
        assert_close(got, ref)
    neuron_model.close()


def test_repr_and_report(cnn):
    model, x = cnn
    neuron_model = kiln.trace(model, x)
    assert "input_0: float32[2, 3, 16, 16]" in repr(neuron_model)
    r = neuron_model.load_report()
    assert set(r) >= {"read_ms", "verify_ms", "place_ms", "kernels_ms", "total_ms", "file_bytes",
                      "weight_bytes", "copied_bytes", "arena_bytes", "core", "placements"}
    assert r["core"] == -1 and r["placements"] == 0
    neuron_model(x)
    assert neuron_model.load_report()["placements"] == 1


# -- the example -----------------------------------------------------------------------------

def test_example_pipeline_runs(work):
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "python"))
    r = subprocess.run([sys.executable, os.path.join(REPO, "python", "examples", "pipeline.py"),
                        "--workdir", str(work)], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all outputs match PyTorch" in r.stdout
