"""Each benchmark's --smoke run finishes and writes sane JSON (speed itself is not tested)."""
from __future__ import annotations

import importlib.util
import json
import math

import pytest

from benchmarks import kd_kinds, latency, prune_step, train_throughput
from distill.losses import KD_KINDS


def run_smoke(module, tmp_path, *extra) -> dict:
    path = tmp_path / "out.json"
    returned = module.main(["--smoke", "--json", str(path), *extra])
    written = json.loads(path.read_text())
    assert written["smoke"] is True and written["machine"]["device"]
    assert written.keys() == returned.keys()
    return written


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_train_throughput_smoke(tmp_path):
    result = run_smoke(train_throughput, tmp_path)
    for key in ("toolkit_vs_bare", "kd_vs_ce", "cached_kd_vs_ce"):
        assert positive(result[key])
    assert result["toolkit_vs_bare"] == pytest.approx(result["students"]["pruned_1"]["toolkit_vs_bare"])
    variants = {(r["student"], r["variant"]) for r in result["rows"]}
    assert variants == {(s, v) for s in ("dense", "pruned_1") for v in ("bare", "ce", "kd", "kd_cached")}
    assert all(positive(r["images_per_s"]) for r in result["rows"])
    dense, pruned = (result["students"][s]["params"] for s in ("dense", "pruned_1"))
    assert pruned < dense
    assert {r["loader"] for r in result["loaders"]} == {"gpu_resident", "dataloader"}
    assert all(positive(r["train_images_per_s"]) and positive(r["load_images_per_s"]) for r in result["loaders"])
    assert positive(result["cache_build"]["views_per_s"])


def test_train_throughput_smoke_on_an_imagefolder(tmp_path):
    result = run_smoke(train_throughput, tmp_path, "--make-folder", str(tmp_path / "folder"))
    assert result["data"] == f"imagefolder:{tmp_path / 'folder'}" and positive(result["decode"][0]["ms_per_image"])
    got = {(r["path"], r["variant"]) for r in result["rows"] if positive(r["images_per_s"])}
    assert got == {("streaming", v) for v in ("load", "ce", "kd")} | {("in_memory", v) for v in
                                                                    ("load", "ce", "kd", "kd_cached")}


def test_prune_step_smoke_times_both_backends_and_they_agree(tmp_path):
    pytest.importorskip("nni")
    result = run_smoke(prune_step, tmp_path)
    assert set(result["seconds_per_step"]) == {"nni", "torch-pruning"}
    assert all(positive(s) for s in result["seconds_per_step"].values())
    assert result["same_channels"] is True and result["max_abs_diff"] == 0.0
    assert [r["step"] for r in result["rows"]] == [1, 1]


def test_latency_smoke_rows(tmp_path):
    engines = [e for e in latency.ENGINES if e != "onnxruntime" or importlib.util.find_spec("onnxruntime")]
    result = run_smoke(latency, tmp_path, "--engines", *engines, "--breakdown")
    rows = result["rows"]
    assert {(r["engine"], r["memory_format"]) for r in rows} == {
        ("torch", "contiguous"), ("torch", "channels_last"),
        *((e, "contiguous") for e in engines if e != "torch")}
    for r in rows:
        assert {"step", "params", "flops", "speedup", "speedup_over_flops_reduction"} <= r.keys()
        assert positive(r["ms"]) and positive(r["speedup"])
        if r["step"] == 0:
            assert r["speedup"] == 1.0 and r["flops_reduction"] == 1.0
        else:
            assert r["flops_reduction"] > 1.0 and r["params"] < 23_712_932
            assert r["speedup_over_flops_reduction"] == pytest.approx(r["speedup"] / r["flops_reduction"])
    assert len(result["memory_formats"]) == 2  # dense and step 1, both formats timed
    assert [r["step"] for r in result["breakdown"]] == [0, 1]
    for r in result["breakdown"]:
        parts = {k: v for k, v in r.items() if k not in ("step", "image_size", "batch", "total_ms", "rest")}
        assert set(parts) == set(latency.STEM_PARTS.values()) | set(latency.BLOCK_PARTS.values())
        assert all(positive(v) for v in parts.values())
        assert 0 <= r["rest"] < r["total_ms"]  # the timed parts do not nest, so they fit inside the whole


@pytest.mark.parametrize("name, part", [("conv1", "stem"), ("maxpool", "stem"), ("fc", "head"),
                                        ("layer1.0.conv1", "pruned_convs"), ("layer4.2.bn2", "pruned_bn"),
                                        ("layer3.5.conv3", "conv3"), ("layer2.0.downsample", "downsample"),
                                        ("layer2.0.downsample.0", None), ("layer2.0", None), ("layer2", None)])
def test_latency_breakdown_assigns_each_module_one_part(name, part):
    assert latency.part_of(name) == part


def test_kd_kinds_smoke_times_every_kind_against_logits(tmp_path):
    result = run_smoke(kd_kinds, tmp_path)
    kinds = {"ce", "logits_2_teachers", *KD_KINDS}
    assert set(result["vs_logits"]) == {"dense", "pruned_1"}
    for ratios in result["vs_logits"].values():
        assert set(ratios) == kinds and ratios["logits"] == 1.0
        assert all(positive(r) for r in ratios.values())
    params = {r["student"]: r["params"] for r in result["rows"]}
    assert params["pruned_1"] < params["dense"]
