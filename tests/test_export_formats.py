"""Export to torch, safetensors, ONNX and TorchScript: each file reproduces the checkpoint's logits."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agent_lightning import Policy, export
from agent_lightning.errors import ConfigError
from agent_lightning.export import load_agent
from agent_lightning.export import main as export_main

from .policy_setup import N_ACTIONS, OBS_DIM, scaled_task, trained_run

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    return trained_run(tmp_path_factory)


def _torch_logits(ckpt: Path, obs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return load_agent(ckpt)(torch.from_numpy(obs)).numpy()


def test_onnx_has_a_dynamic_batch_and_the_normalisation_inside(run, tmp_path: Path, capsys) -> None:
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "agent.onnx"
    assert export_main([str(run["ckpt"]), str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} (onnx): AgentMLP {OBS_DIM} -> {N_ACTIONS}" in printed and "max abs diff" in printed

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (graph_input,) = session.get_inputs()
    assert graph_input.name == "obs" and isinstance(graph_input.shape[0], str) and graph_input.shape[1] == OBS_DIM
    model = load_agent(run["ckpt"])
    assert model.normalizer.active and float(model.normalizer.mean.abs().max()) > 1  # raw inputs differ from normalised
    for rows in (1, 7, 300):  # one graph for every batch size
        obs, _ = scaled_task(rows, seed=rows)
        (logits,) = session.run(None, {"obs": obs})
        assert logits.shape == (rows, N_ACTIONS)
        assert np.abs(logits - _torch_logits(run["ckpt"], obs)).max() <= 1e-5


def test_torchscript_matches_torch_and_loads_without_this_package(run, tmp_path: Path) -> None:
    out = tmp_path / "agent.ts"
    assert export_main([str(run["ckpt"]), str(out)]) == 0
    scripted = torch.jit.load(str(out))  # what a libtorch or plain-torch user does
    obs, _ = scaled_task(64, seed=2)
    with torch.no_grad():
        logits = scripted(torch.from_numpy(obs)).numpy()
    assert np.abs(logits - _torch_logits(run["ckpt"], obs)).max() <= 1e-5
    # The format is read from the file, not its name: format= writes TorchScript under any suffix.
    other = tmp_path / "agent.model"
    assert export_main([str(run["ckpt"]), str(other), "format=torchscript"]) == 0
    np.testing.assert_array_equal(Policy.load(other).act(obs), Policy.load(run["ckpt"]).act(obs))
    # A name that promises weights (read without running code) is never given to a program, nor run as one.
    weights_name = tmp_path / "agent.pt"
    with pytest.raises(ConfigError, match=r"format=torchscript writes a program, and .*agent.pt is a name for weights"):
        export.export(run["ckpt"], weights_name, format="torchscript")
    other.rename(weights_name)
    with pytest.raises(ConfigError, match=r"agent.pt is a TorchScript program, not weights: .* name it agent.ts"):
        Policy.load(weights_name)


def test_safetensors_round_trip_keeps_weights_statistics_and_config(run, tmp_path: Path) -> None:
    safetensors = pytest.importorskip("safetensors")
    out = export.export(run["ckpt"], tmp_path / "agent.safetensors")
    with safetensors.safe_open(str(out), framework="pt") as stored:
        config = json.loads(stored.metadata()["agent_lightning.model_config"])
    assert (config["input_dim"], config["output_dim"], config["hidden_dim"]) == (OBS_DIM, N_ACTIONS, 32)
    original, loaded = load_agent(run["ckpt"]).state_dict(), Policy.load(out).model.state_dict()
    assert original.keys() == loaded.keys() and "normalizer.mean" in loaded
    for name, tensor in original.items():
        assert torch.equal(tensor, loaded[name]), name
    # A safetensors export is itself an input to export (its weights and config are in the file); an ONNX
    # export holds a program, not weights, and is refused in one line.
    assert export_main([str(out), str(tmp_path / "again.pt")]) == 0
    again = Policy.load(tmp_path / "again.pt")
    assert all(torch.equal(t, again.model.state_dict()[n]) for n, t in original.items())
    assert again.class_names == Policy.load(run["ckpt"]).class_names
    onnx = tmp_path / "agent.onnx"
    onnx.write_bytes(b"not read")
    with pytest.raises(ConfigError, match=r"agent.onnx is an ONNX export, which holds a program rather than weights"):
        export.export(onnx, tmp_path / "from_onnx.pt")


def test_the_positional_torch_export_still_works(run, tmp_path: Path) -> None:
    out = tmp_path / "agent.pt"
    assert export_main([str(run["ckpt"]), str(out)]) == 0
    stored = torch.load(out, weights_only=True)
    assert set(stored) == {"model_config", "state_dict", "data_class_names"}  # numbered labels: no feature names
    assert stored["data_class_names"] == [str(c) for c in range(N_ACTIONS)]
    obs, _ = scaled_task(64, seed=3)
    np.testing.assert_array_equal(Policy.load(out).act(obs), Policy.load(run["ckpt"]).act(obs))


def test_bad_formats_and_a_failed_check_leave_the_previous_export_intact(run, tmp_path: Path, monkeypatch, capsys):
    out = tmp_path / "agent.ts"
    assert export_main([str(run["ckpt"]), str(out)]) == 0
    good = out.read_bytes()
    capsys.readouterr()
    assert export_main([str(run["ckpt"]), str(tmp_path / "agent.bin")]) == 2
    assert "cannot tell the format from its suffix" in capsys.readouterr().err
    assert export_main([str(run["ckpt"]), str(tmp_path / "agent.bin"), "format=onnx"]) == 2  # unloadable so named
    assert "format=onnx files are told by their suffix when loaded: name it agent.onnx" in capsys.readouterr().err
    assert export_main([str(run["ckpt"]), str(tmp_path / "agent.bin"), "format=torch"]) == 0  # read by its content
    assert Policy.load(tmp_path / "agent.bin").n_actions == N_ACTIONS and not list(tmp_path.glob(".*"))
    (tmp_path / "agent.bin").unlink()
    assert export_main([str(run["ckpt"]), str(out), "format=tflite"]) == 2
    assert "format='tflite' is not one of torch, safetensors, onnx, torchscript" in capsys.readouterr().err
    checkpoint = Path(run["ckpt"]).read_bytes()  # exporting a checkpoint over itself would lose its training state
    assert export_main([str(run["ckpt"]), str(run["ckpt"]), "format=torch"]) == 2
    assert "is the file being exported: give another output file" in capsys.readouterr().err
    assert Path(run["ckpt"]).read_bytes() == checkpoint
    with pytest.raises(SystemExit):  # argparse: OUTPUT is missing; the optional format= is not asked for
        export_main([str(run["ckpt"])])
    assert "required: output\n" in capsys.readouterr().err

    monkeypatch.setattr(export, "EXPORT_TOLERANCE", -1.0)  # every check now fails
    assert export_main([str(run["ckpt"]), str(out)]) == 2
    assert "the export's logits differ from the model's" in capsys.readouterr().err
    assert out.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["agent.ts"]


def test_a_missing_extra_names_the_install_command(run, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    install = r"pip install 'lightning-agent-trainer\[export\]'"
    with pytest.raises(ConfigError, match=r"format=onnx needs the package 'onnxscript': " + install):
        export.export(run["ckpt"], tmp_path / "agent.onnx")
    assert not (tmp_path / "agent.onnx").exists()
