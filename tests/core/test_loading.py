"""Model import: every file kind, detected by content, and every kind of bad input."""

from __future__ import annotations

import os
import pickle
import shutil

import pytest
import torch
import torchvision

from quantstudio.core.errors import InputError, TrustRequired
from quantstudio.core.loading import (
    KIND_EXPORTED,
    KIND_ONNX,
    KIND_PICKLED,
    KIND_STATE_DICT,
    KIND_TORCHSCRIPT,
    load_model,
    parse_shape,
)
from tests.core.models import save_all_forms, tiny_net


@pytest.fixture(scope="module")
def squeeze_sd(tmp_path_factory):
    """A squeezenet1_1 state_dict with 7 classes (small: 3 MB)."""
    torch.manual_seed(0)
    m = torchvision.models.squeezenet1_1(num_classes=7).eval()
    path = tmp_path_factory.mktemp("sd") / "weights.pth"
    torch.save(m.state_dict(), path)
    return path, m


@pytest.fixture(scope="module")
def tiny_forms(tmp_path_factory):
    m = tiny_net()
    x = torch.randn(1, 3, 32, 32)
    return save_all_forms(m, x, tmp_path_factory.mktemp("forms"), "tiny"), m, x


def test_state_dict_with_arch_reads_num_classes_and_matches_outputs(squeeze_sd):
    path, ref = squeeze_sd
    model = load_model(path, arch="squeezenet1_1")
    assert model.kind == KIND_STATE_DICT
    assert model.num_classes == 7
    assert model.input_shape == (1, 3, 224, 224)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model.module(x), ref(x))


def test_state_dict_without_arch_is_guessed_with_confidence(squeeze_sd):
    path, _ = squeeze_sd
    model = load_model(path)
    assert model.arch == "squeezenet1_1"
    assert model.arch_confidence == pytest.approx(1.0)
    assert model.num_classes == 7
    assert any("guessed" in n for n in model.notes)


def test_checkpoint_dict_and_dataparallel_prefix(tmp_path, squeeze_sd):
    _, ref = squeeze_sd
    ckpt = {"epoch": 3, "state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}
    path = tmp_path / "ckpt.pt"
    torch.save(ckpt, path)
    model = load_model(path, arch="squeezenet1_1")
    assert model.num_classes == 7
    assert any("'state_dict' entry" in n for n in model.notes)
    assert any("module." in n for n in model.notes)


def test_kind_comes_from_content_not_extension(tiny_forms, tmp_path):
    paths, ref, x = tiny_forms
    # A TorchScript archive named .onnx and an ONNX file named .pth still load as what they are.
    odd_ts = tmp_path / "model.onnx"
    shutil.copy(paths["torchscript"], odd_ts)
    odd_onnx = tmp_path / "model.pth"
    shutil.copy(paths["onnx"], odd_onnx)
    assert load_model(odd_ts).kind == KIND_TORCHSCRIPT
    assert load_model(odd_onnx).kind == KIND_ONNX


@pytest.mark.parametrize("form,kind", [
    ("torchscript", KIND_TORCHSCRIPT), ("pt2", KIND_EXPORTED), ("onnx", KIND_ONNX),
])
def test_other_forms_load_and_give_the_same_outputs(tiny_forms, form, kind):
    paths, ref, x = tiny_forms
    model = load_model(paths[form], input_shape=(1, 3, 32, 32))
    assert model.kind == kind
    assert model.input_shape == (1, 3, 32, 32)
    out = model.forward_numpy(x.numpy())
    with torch.no_grad():
        expected = ref(x).numpy()
    assert out.shape == expected.shape == (1, 5)
    assert abs(out - expected).max() < 1e-4
    assert model.num_classes == 5


def test_onnx_and_pt2_know_their_input_shape(tiny_forms):
    paths, _, _ = tiny_forms
    assert load_model(paths["onnx"]).input_shape == (1, 3, 32, 32)
    assert load_model(paths["pt2"]).input_shape == (1, 3, 32, 32)


def test_whole_pickle_needs_trust(tiny_forms):
    paths, ref, x = tiny_forms
    with pytest.raises(TrustRequired) as err:
        load_model(paths["whole"])
    assert "--trust" in str(err.value)
    assert "runs code" in str(err.value)
    model = load_model(paths["whole"], trust=True, input_shape=(1, 3, 32, 32))
    assert model.kind == KIND_PICKLED
    assert model.arch == "TinyNet"


class _CreatesFile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_malicious_pickle_creates_nothing_without_trust(tmp_path):
    victim = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    torch.save({"payload": _CreatesFile(str(victim))}, path)
    assert not victim.exists()
    with pytest.raises(TrustRequired):
        load_model(path)
    assert not victim.exists(), "unpickling ran code from the file without consent"


def test_pickled_model_class_from_source_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "usernet_mod.py").write_text(
        "import torch\n"
        "class UserNet(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(4, 2)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x)\n"
    )
    import sys

    sys.path.insert(0, str(src))
    try:
        import usernet_mod

        torch.save(usernet_mod.UserNet(), tmp_path / "user.pth")
    finally:
        sys.path.remove(str(src))
        sys.modules.pop("usernet_mod", None)
    with pytest.raises(InputError) as err:
        load_model(tmp_path / "user.pth", trust=True)
    assert "source" in err.value.hint
    model = load_model(tmp_path / "user.pth", trust=True, source_dir=src)
    assert model.input_shape == (1, 4)
    sys.modules.pop("usernet_mod", None)
    if str(src.resolve()) in sys.path:
        sys.path.remove(str(src.resolve()))


# ----------------------------------------------------------------------------- bad input


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match="no such file") as err:
        load_model(tmp_path / "nope.pth")
    assert err.value.path == tmp_path / "nope.pth"


def test_directory(tmp_path):
    with pytest.raises(InputError, match="folder"):
        load_model(tmp_path)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.pth"
    p.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        load_model(p)


@pytest.mark.parametrize("fraction", [0.001, 0.1, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_pth(squeeze_sd, tmp_path, fraction, legacy):
    path, ref = squeeze_sd
    src = path
    if legacy:
        src = tmp_path / "legacy.pth"
        torch.save(ref.state_dict(), src, _use_new_zipfile_serialization=False)
    data = src.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: max(1, int(len(data) * fraction))])
    with pytest.raises(InputError) as err:
        load_model(cut, arch="squeezenet1_1")
    assert str(cut) in str(err.value)
    assert "truncated" in str(err.value) or "damaged" in str(err.value)


@pytest.mark.parametrize("name", ["random.onnx", "random.pth", "random.pt2"])
def test_random_bytes(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(os.urandom(4096))
    with pytest.raises(InputError) as err:
        load_model(p)
    assert str(p) in str(err.value)


def test_state_dict_of_another_architecture_lists_keys(squeeze_sd):
    path, _ = squeeze_sd
    with pytest.raises(InputError) as err:
        load_model(path, arch="resnet18")
    text = str(err.value)
    assert "do not fit resnet18" in text
    assert "missing" in text and "unexpected" in text
    assert "conv1.weight" in err.value.details  # a missing key, listed in full


def test_mis_shaped_keys_are_listed(tmp_path):
    torch.manual_seed(0)
    sd = torchvision.models.squeezenet1_1(num_classes=7).state_dict()
    sd["features.0.weight"] = torch.zeros(64, 1, 3, 3)  # 1 input channel instead of 3
    p = tmp_path / "odd.pth"
    torch.save(sd, p)
    with pytest.raises(InputError) as err:
        load_model(p, arch="squeezenet1_1")
    assert "mis-shaped" in str(err.value)
    assert "features.0.weight" in str(err.value)


def test_unknown_arch_suggests_close_names(squeeze_sd):
    path, _ = squeeze_sd
    with pytest.raises(InputError) as err:
        load_model(path, arch="resnet81")
    assert "unknown architecture 'resnet81'" in str(err.value)
    assert "resnet18" in err.value.hint


def test_wrong_input_shape_names_the_expected_one(squeeze_sd, tiny_forms):
    path, _ = squeeze_sd
    with pytest.raises(InputError) as err:
        load_model(path, arch="squeezenet1_1", input_shape=(1, 1, 224, 224))
    assert "1,3,224,224" in str(err.value)
    paths, _, _ = tiny_forms
    with pytest.raises(InputError) as err:
        load_model(paths["onnx"], input_shape=(1, 3, 64, 64))
    assert "1,3,32,32" in str(err.value)
    with pytest.raises(InputError) as err:
        load_model(paths["torchscript"], input_shape=(1, 1, 32, 32))
    assert "does not accept input of shape 1,1,32,32" in str(err.value)


def test_parse_shape():
    assert parse_shape("1,3,224,224") == (1, 3, 224, 224)
    assert parse_shape("1x3x8x8") == (1, 3, 8, 8)
    for bad in ["", "a,b", "1,-3", "0"]:
        with pytest.raises(InputError):
            parse_shape(bad)


def test_checkpoint_metadata_gives_arch_shape_and_class_names(tmp_path, squeeze_sd):
    _, ref = squeeze_sd
    path = tmp_path / "meta.pth"
    torch.save({"state_dict": ref.state_dict(), "arch": "squeezenet1_1", "input_shape": [1, 3, 96, 96],
                "class_names": list("abcdefg")}, path)
    model = load_model(path)
    assert model.arch == "squeezenet1_1" and model.arch_confidence is None
    assert model.input_shape == (1, 3, 96, 96)
    assert model.class_names == list("abcdefg")
    assert load_model(path, input_shape=(1, 3, 64, 64)).input_shape == (1, 3, 64, 64)


def test_a_torchscript_shape_is_only_a_guess_and_says_so(tiny_forms):
    paths, _, _ = tiny_forms
    guessed = load_model(paths["torchscript"])
    assert guessed.input_shape_guessed and any("assumed from the first layer" in n for n in guessed.notes)
    given = load_model(paths["torchscript"], input_shape=(1, 3, 32, 32))
    assert not given.input_shape_guessed and not given.notes
    assert not load_model(paths["onnx"]).input_shape_guessed  # ONNX files record their shape


# --------------------------------------------------------------------------- issue 17: hardening


def _zip_directory(data: bytes) -> tuple[int, int]:
    """(offset of the first central-directory entry, offset of the end record)."""
    import struct

    eocd = data.rfind(b"PK\x05\x06")
    return struct.unpack("<I", data[eocd + 16:eocd + 20])[0], eocd


def _corrupt(data: bytes, how: str) -> bytes:
    """One damage the audit found escaping as a traceback, made on purpose."""
    cd, eocd = _zip_directory(data)
    b = bytearray(data)
    if how == "encrypted_flag":  # general-purpose flag bit 0 of the first entry → RuntimeError
        b[cd + 8] |= 0x01
    elif how == "compression_method":  # method 99 (AES) → NotImplementedError
        b[cd + 10:cd + 12] = (99).to_bytes(2, "little")
    elif how == "zip_version":  # "version needed" far above what zipfile reads → NotImplementedError
        b[cd + 6:cd + 8] = (250).to_bytes(2, "little")
    elif how == "name_not_utf8":  # UTF-8 flag with a byte that is not UTF-8 → UnicodeDecodeError
        b[cd + 9] |= 0x08
        b[cd + 46] = 0xFF
    elif how == "multi_disk":  # "disk 1" in the ZIP64 locator torch writes → BadZipFile
        locator = data.rfind(b"PK\x06\x07")
        assert locator > 0
        b[locator + 4] = 1
    elif how == "deflate_on_stored":  # stored bytes read as deflate → zlib.error
        b[cd + 10:cd + 12] = (8).to_bytes(2, "little")
    return bytes(b)


@pytest.fixture(scope="module")
def archives(tiny_forms, squeeze_sd):
    paths, _, _ = tiny_forms
    return {"state_dict": squeeze_sd[0], "torchscript": paths["torchscript"], "pt2": paths["pt2"]}


@pytest.mark.parametrize("kind", ["state_dict", "torchscript", "pt2"])
@pytest.mark.parametrize("how", ["encrypted_flag", "compression_method", "zip_version", "name_not_utf8",
                                 "multi_disk", "deflate_on_stored"])
def test_damaged_zip_directory_is_an_input_error_naming_the_file(archives, kind, how, tmp_path):
    bad = tmp_path / f"damaged_{kind}.pth"
    bad.write_bytes(_corrupt(archives[kind].read_bytes(), how))
    with pytest.raises(InputError) as exc:
        load_model(bad, arch="squeezenet1_1" if kind == "state_dict" else None)
    assert str(bad) in str(exc.value)
    assert "damaged" in exc.value.message or "not a" in exc.value.message


def test_fake_pt2_prints_no_traceback(tmp_path, capfd, caplog):
    import zipfile

    fake = tmp_path / "fake.pt2"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("fake/archive_format", "pt2")
        zf.writestr("fake/models/model.json", "{not json")
    with pytest.raises(InputError) as exc:
        load_model(fake)
    assert str(fake) in str(exc.value)
    assert "torch.export" in exc.value.message
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert not any("Traceback" in (r.exc_text or "") or r.exc_info for r in caplog.records)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_fifo_is_not_called_empty(tmp_path):
    fifo = tmp_path / "model.pth"
    os.mkfifo(fifo)
    with pytest.raises(InputError) as exc:
        load_model(fifo)  # must not block reading the pipe either
    assert "not a regular file" in exc.value.message
    assert "empty" not in exc.value.message


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_device_is_not_called_empty():
    with pytest.raises(InputError) as exc:
        load_model("/dev/zero")
    assert "not a regular file" in exc.value.message
    assert "/dev/zero" in str(exc.value)


def test_symlink_loop_is_not_called_missing(tmp_path):
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    a.symlink_to(b)
    b.symlink_to(a)
    with pytest.raises(InputError) as exc:
        load_model(a)
    assert "link loop" in exc.value.message
    assert "no such file" not in str(exc.value)


def test_dangling_symlink_names_its_target(tmp_path):
    link = tmp_path / "model.pth"
    link.symlink_to(tmp_path / "gone.pth")
    with pytest.raises(InputError) as exc:
        load_model(link)
    assert "gone.pth" in exc.value.message


def test_dot_dot_in_paths_is_printed_as_given():
    err = InputError("the file is damaged.", path="../models/../m.pth", hint="Save it again.")
    assert err.one_line() == "../models/../m.pth: the file is damaged. Save it again."


def _poison(module: torch.nn.Module, value: float) -> torch.nn.Module:
    with torch.no_grad():
        module.conv2.weight[0, 0, 0, 0] = value
        module.fc.bias[1] = value
    return module


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("form", ["whole", "torchscript", "pt2", "onnx"])
def test_nan_or_inf_weights_are_named_by_layer(form, value, tmp_path):
    x = torch.randn(1, 3, 32, 32)
    paths = save_all_forms(_poison(tiny_net(), value), x, tmp_path, "poisoned")
    with pytest.raises(InputError) as exc:
        load_model(paths[form], trust=True)
    message = str(exc.value)
    assert str(paths[form]) in message
    assert "NaN or infinite" in message
    if form != "onnx":  # ONNX export renames folded weights; the count still says two
        assert "conv2" in message and "fc" in message
    assert "2 layers" in message


def test_nan_in_a_state_dict_is_named_by_layer(squeeze_sd, tmp_path):
    _, ref = squeeze_sd
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    sd["features.3.squeeze.weight"][0] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(sd, path)
    with pytest.raises(InputError) as exc:
        load_model(path, arch="squeezenet1_1")
    assert str(path) in str(exc.value)
    assert "features.3.squeeze" in exc.value.message


def test_custom_onnx_operator_is_named(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("MyOp", ["x"], ["y"], domain="com.acme")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    path = tmp_path / "custom.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.acme", 1)]), path)
    with pytest.raises(InputError) as exc:
        load_model(path)
    assert str(path) in str(exc.value)
    assert "com.acme:MyOp" in exc.value.message
    assert "tmp" not in exc.value.message


def test_two_input_onnx_is_refused_by_name(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 8, 8]) for n in ("image", "mask")]
    graph = helper.make_graph([helper.make_node("Add", ["image", "mask"], ["y"])], "g", info,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(InputError) as exc:
        load_model(path)
    assert str(path) in str(exc.value)
    assert "2 inputs (image, mask)" in exc.value.message


def test_mlp_state_dict_says_it_needs_the_network_code(tmp_path):
    mlp = torch.nn.Sequential(torch.nn.Linear(20, 10), torch.nn.ReLU(), torch.nn.Linear(10, 3))
    path = tmp_path / "mlp.pth"
    torch.save(mlp.state_dict(), path)
    with pytest.raises(InputError) as exc:
        load_model(path)
    assert str(path) in str(exc.value)
    assert "match none of the torchvision architectures" in exc.value.message
    assert "torch.save(model, path)" in exc.value.hint


def test_batch_one_pt2_runs_at_its_batch_and_says_so(tiny_forms):
    paths, _, _ = tiny_forms
    model = load_model(paths["pt2"])
    assert model.fixed_batch == 1
    assert model.batch_size_for(32) == 1
    assert any("--batch-size 1" in n for n in model.notes)


def test_errors_carry_a_kind_front_ends_switch_on(tmp_path):
    """The app decides which question to ask from the kind, never from the English text."""
    import torchvision

    from quantstudio.core.errors import ErrorKind, TrustRequired
    from quantstudio.gui.tasks import _fixable
    from tests.core.models import tiny_net

    p = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), p)
    with pytest.raises(InputError) as info:
        load_model(p, arch="mobilenet_v2")
    assert info.value.kind is ErrorKind.NEEDS_ARCHITECTURE and _fixable(info.value, "torch_pickle") == "arch"
    assert "--arch" in info.value.hint and "--arch" not in info.value.hint_for_app()
    with pytest.raises(InputError) as info:
        load_model(p, arch="resnet18", input_shape=(1, 1, 64, 64))
    assert info.value.kind is ErrorKind.NEEDS_INPUT_SHAPE and _fixable(info.value, "torch_pickle") == "shape"
    whole = tmp_path / "whole.pth"
    torch.save(tiny_net(), whole)
    with pytest.raises(TrustRequired) as info:
        load_model(whole)
    assert info.value.kind is ErrorKind.NEEDS_TRUST
    # A message that merely mentions an input shape is not a question to ask.
    assert _fixable(InputError("the input shape was fine but the file is damaged"), "torch_pickle") == ""
