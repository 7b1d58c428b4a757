"""How the bundle configs read: no key used before it is defined, the data loading written out as transforms (and
equal to ``prato_components.bundle``'s), one ``pruner_def`` block, ``evaluate.json`` an overlay, truthful metadata."""

from __future__ import annotations

import copy
import json
import os
import re

import pytest
import torch
from conftest import ALL_BUNDLES as BUNDLES_ON_DISK
from conftest import ROOT, read_json
from monai.bundle import ConfigParser
from monai.transforms import Compose

from prato_components.bundle import (
    BTCV_LABELS,
    DATA_SETTINGS,
    SETTING_RULES,
    dataset_spec,
    load_transforms,
    load_transforms_3d,
)
from prato_components.data import make_btcv_like
from prato_components.data.splits import load_or_create_split
from prato_components.verification import TINY_NETWORKS, config_chain, split_bundle_name, tiny_overrides
from tools.bundlegen.cli import WORK_ITEM, Bundles, bundle_files, reading_order_problems
from tools.bundlegen.configs import train_config
from tools.bundlegen.order import forward_references
from tools.bundlegen.spec import ALL_BUNDLES, BACKBONES, BACKBONES_3D, BUNDLES_3D, PRUNING_KEYS
from tools.bundlegen.templates import bundle_text


def _configs(bundle: str) -> str:
    return os.path.join(ROOT, "bundles", bundle, "configs")


def test_committed_bundles_match_the_generator():
    """``tools/bundles.py check`` passes, the bundles on disk are exactly the generator's, and every generated file
    (the multi-GPU overlays included) is the committed one."""
    assert "match" in Bundles().check()
    assert sorted(ALL_BUNDLES) == BUNDLES_ON_DISK
    for name in ALL_BUNDLES:
        for rel, content in bundle_files(name).items():
            with open(os.path.join(ROOT, "bundles", name, rel)) as f:
                assert f.read() == content, (name, rel)


def test_the_generator_shrinks_each_backbone_with_the_packages_tiny_widths():
    """The tests and the verification shrink a bundle with ``prato_components.verification.TINY_NETWORKS``; the
    generator's backbones are exactly those, each with that entry."""
    assert set(TINY_NETWORKS) == set(BACKBONES) | set(BACKBONES_3D)
    for backbone, spec in {**BACKBONES, **BACKBONES_3D}.items():
        assert spec["tiny"] == TINY_NETWORKS[backbone], backbone
    assert tiny_overrides("swin_unetr3d_prato", 32)["image_size"] == 64  # Swin 3D's bottleneck needs 64^3
    assert split_bundle_name("swin_unetr3d_prato") == ("swin_unetr3d", "prato")
    assert split_bundle_name("unetr_dynamicvit") == ("unetr", "dynamicvit")
    with pytest.raises(ValueError, match="'vit_prato' does not start with a known backbone"):
        split_bundle_name("vit_prato")


@pytest.mark.parametrize("bundle", ALL_BUNDLES)
def test_every_config_reads_top_to_bottom(bundle):
    assert reading_order_problems(bundle) == []


def test_a_forward_reference_is_named():
    assert forward_references([{"a": "@b", "b": 1}]) == ["config 0: a uses @b before it is defined"]
    assert forward_references([{"b": 1, "a": "$@b + 1"}]) == []
    nested = {"t": {"pre": "$@t#aug + @t#prompt", "aug": [], "prompt": []}}
    assert forward_references([nested]) == ["config 0: t#pre uses @t#aug before it is defined",
                                             "config 0: t#pre uses @t#prompt before it is defined"]
    assert forward_references([{"t": {"x": "@t"}}]) == ["config 0: t#x uses @t before it is defined"]  # a cycle
    # an overlay may use what the config before it defines, not what comes later in itself
    assert forward_references([{"b": 1}, {"a": "@b#c", "c": "@d", "d": 2}], ["train", "evaluate"]) == [
        "evaluate: c uses @d before it is defined"]


def test_moving_validate_after_train_is_a_forward_reference():
    config = train_config("unetr_prato")
    validate = config.pop("validate")
    config = {**config, "validate": validate}  # train's ValidationHandler now uses @validate#evaluator first
    assert forward_references([json.loads(json.dumps(config))]) == [
        "config 0: train#handlers#2#validator uses @validate#evaluator before it is defined"]


def test_evaluate_runs_as_an_overlay_on_train():
    assert config_chain("evaluate") == ["train", "evaluate"]
    assert config_chain("inference") == ["inference"]
    assert config_chain("train+multi_gpu_train") == ["train", "multi_gpu_train"]


@pytest.mark.parametrize("bundle", ALL_BUNDLES)
def test_evaluate_holds_only_what_differs_from_train(bundle):
    train, evaluate = (read_json(os.path.join(_configs(bundle), f)) for f in ("train.json", "evaluate.json"))
    same = [key for key, value in evaluate.items() if train.get(key, KeyError) == value]
    assert same == []
    assert not {"imports", "network_def", "pruner_def", "splits", "preprocessing", "dataset"} & set(evaluate)
    parser = ConfigParser()
    parser.read_config([os.path.join(_configs(bundle), f) for f in ("train.json", "evaluate.json")])
    assert parser["run"] == ["$@evaluator.run()"]
    assert parser["evaluator"]["postprocessing"] == "@validate#postprocessing"


@pytest.mark.parametrize("bundle", ALL_BUNDLES)
def test_one_pruner_block_above_the_network(bundle):
    _, pruner = split_bundle_name(bundle)
    for file in ("train.json", "inference.json"):
        config = read_json(os.path.join(_configs(bundle), file))
        keys = list(config)
        assert keys.index("pruner_def") < keys.index("network_def")
        assert config["network_def"]["pruner"] == "@pruner_def"
        assert "pruner_kwargs" not in config["network_def"]
        if pruner == "baseline":  # nothing to prune: no pruner, budget, stages or schedule
            assert config["pruner_def"] is None
            unused = {"keep_ratio", "warmup_epochs", "ramp_epochs", *PRUNING_KEYS} & (set(config) |
                                                                                        set(config["network_def"]))
            assert unused == set()
            assert "keep_ratio" not in json.dumps(config)
        else:
            assert config["pruner_def"]["_target_"].lower().endswith("." + pruner.replace("random", "randompruner"))
            assert config["pruner_def"]["keep_ratio"] == "$@network_settings['keep_ratio']"


@pytest.mark.parametrize("bundle", ALL_BUNDLES)
def test_network_settings_are_written_once(bundle):
    """Each network setting is one top-level key (the value, overridden on the command line) and one entry of
    ``network_settings`` that refers to it; the network and everything sized by it read ``network_settings``, and
    ``evaluate.json`` / ``inference.json`` take the checkpoint's settings through it, not one expression each."""
    train, evaluate, inference = (read_json(os.path.join(_configs(bundle), f"{c}.json"))
                                  for c in ("train", "evaluate", "inference"))
    settings = train["network_settings"]["settings"]
    assert settings == {key: f"@{key}" for key in settings} and {"in_channels", "decode_region"} <= set(settings)
    assert inference["network_settings"] == {**train["network_settings"], "trained": "@trained",
                                             "overridden": "$prato_components.bundle.override_keys()"}
    assert {k: v for k, v in evaluate.items() if k.startswith("network_settings")} == {
        "network_settings#trained": "@trained",
        "network_settings#overridden": "$prato_components.bundle.override_keys()"}
    assert [inference[key] for key in settings] == [train[key] for key in settings]  # the same defaults
    assert not set(settings) & set(evaluate)  # evaluation changes none: it takes the checkpoint's through the block
    for name, config, listed in (("train", train, 1), ("evaluate", evaluate, 0), ("inference", inference, 1)):
        text = json.dumps(config)
        assert "trained.get" not in text
        # each setting is read once (in network_settings), and by check_settings, which checks the values as given;
        # channels and classes follow the data set (DATA_SETTINGS): the labels' one-hot and boxes read them too
        uses = {key: len(re.findall(rf"@{key}(?![\w#\[])", text)) for key in settings if key not in DATA_SETTINGS}
        assert uses == {key: listed + (key in SETTING_RULES) for key in uses}, name


def test_a_backbones_pruned_bundles_differ_in_pruner_def():
    base = read_json(os.path.join(_configs("transunet_random"), "train.json"))
    for pruner in ("tram", "evovit", "dynamicvit"):  # no pruner-specific keys or network extras
        other = read_json(os.path.join(_configs(f"transunet_{pruner}"), "train.json"))
        differing = sorted(k for k in base if base[k] != other.get(k)) + sorted(set(other) - set(base))
        assert differing == ["pruner_def"], (pruner, differing)


@pytest.mark.parametrize("backbone", ["unetr", "transunet", "swin_unetr", "segformer"])
def test_stp_adds_only_its_completion_block_next_to_pruner_def(backbone):
    """STP's learned completion (MTA) is the block ``completion_def`` after ``pruner_def``; ``network_def`` only
    refers to it, so it is otherwise the same as in every other pruned bundle of the backbone."""
    base = read_json(os.path.join(_configs(f"{backbone}_random"), "train.json"))
    stp = read_json(os.path.join(_configs(f"{backbone}_stp"), "train.json"))
    differing = sorted(k for k in base if base[k] != stp.get(k)) + sorted(set(stp) - set(base))
    assert differing == ["network_def", "pruner_def", "completion_def"], differing
    assert {k: v for k, v in stp["network_def"].items() if k != "completion"} == base["network_def"]
    assert stp["network_def"]["completion"] == "@completion_def"
    assert stp["completion_def"]["_target_"] == "prato_components.pruners.MultiLayerTokenAssembly"
    keys = list(stp)
    assert keys.index("pruner_def") + 1 == keys.index("completion_def") == keys.index("network_def") - 1


@pytest.mark.parametrize("bundle", ["swin_unetr_dtop", "segformer_prato"])
def test_hierarchical_backbones_build_one_pruner_per_stage_from_pruner_def(bundle):
    parser = ConfigParser()
    parser.read_config(os.path.join(_configs(bundle), "train.json"))
    parser.update({"image_size": 64, **({"feature_size": 12, "num_heads": [3, 3, 3, 3]} if "swin" in bundle else
                                        {"network_def#embed_dims": [8, 16, 32, 64], "network_def#depths": [1, 1, 1, 1],
                                         "network_def#num_heads": [1, 1, 2, 2], "network_def#decoder_dim": 16})})
    net = parser.get_parsed_content("network_def")
    pruners = dict(net.pruners.items())
    assert sorted(pruners) == ["1", "2"] and pruners["1"] is not pruners["2"]
    assert {type(p).__name__.lower() for p in pruners.values()} == {bundle.split("_")[-1]}
    assert all(p.keep_ratio == 0.75 for p in pruners.values())


@pytest.mark.parametrize("backbone", ["unetr", "transunet", "swin_unetr", "segformer"])
@pytest.mark.parametrize("pruner", ["prato", "stp"])
def test_pruned_bundles_start_from_their_baselines_backbone(backbone, pruner):
    """At one seed a pruned bundle's network has its baseline's backbone weights and leaves the random stream where
    the baseline does (a paired comparison): the pruner and STP's completion are factories the network builds on a
    stream of their own (docs/design.md §5)."""
    nets, streams = {}, {}
    for name in (f"{backbone}_baseline", f"{backbone}_{pruner}"):
        torch.manual_seed(0)
        nets[name] = _parsed(name, "network_def", **tiny_overrides(name)).state_dict()
        streams[name] = torch.random.get_rng_state()
    baseline, pruned = nets.values()
    assert set(baseline) < set(pruned)
    # STP adds its completion, PrATo the coarse head of guided decoding (built on a stream of its own as well)
    assert {k.split(".")[0] for k in set(pruned) - set(baseline)} == ({"pruners", "completion"} if pruner == "stp"
                                                                      else {"pruners", "coarse_head"})
    _same(baseline, {k: pruned[k] for k in baseline})
    assert torch.equal(*streams.values())


def _parsed(bundle: str, key: str, **overrides):
    parser = ConfigParser()
    parser.read_config(os.path.join(_configs(bundle), "train.json"))
    parser.update(overrides)
    return parser.get_parsed_content(key)


def _same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        if isinstance(a[key], torch.Tensor):
            torch.testing.assert_close(torch.as_tensor(a[key]), torch.as_tensor(b[key]), rtol=0, atol=0)
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("dataset", ["acdc", "isic"])
def test_written_out_loading_equals_the_package_loading(dataset, acdc_dir, isic_dir, tmp_path):
    root = {"acdc": acdc_dir, "isic": isic_dir}[dataset]
    splits = load_or_create_split(dataset, root, str(tmp_path / "split.json"), seed=0)
    item = splits["training"][0]
    preprocessing = _parsed("unetr_prato", "preprocessing", dataset=dataset, dataset_dir=root, image_size=32)
    configured = Compose(preprocessing)(copy.deepcopy(item))
    reference = Compose([load_transforms(dataset), *preprocessing[1:]])(copy.deepcopy(item))
    _same({k: configured[k] for k in ("image", "label")}, {k: reference[k] for k in ("image", "label")})
    assert configured["image"].shape[0] == dataset_spec(dataset)["in_channels"]


def test_written_out_3d_loading_equals_the_package_loading(tmp_path):
    root = str(tmp_path / "btcv")
    make_btcv_like(root, num_training=2, num_validation=1, num_test=1, size=(24, 24, 8), organs=2)
    item = load_or_create_split("btcv", root, str(tmp_path / "split.json"), seed=0, slice_level=False)["training"][0]
    preprocessing = _parsed("unetr3d_prato", "preprocessing", dataset_dir=root, pixdim=[2.0, 2.0, 2.0])
    configured = Compose(preprocessing)(copy.deepcopy(item))
    reference = load_transforms_3d("btcv", root, pixdim=(2.0, 2.0, 2.0))(copy.deepcopy(item))
    _same({k: configured[k] for k in ("image", "label")}, {k: reference[k] for k in ("image", "label")})
    # the modality picks the normalisation: CT windowed to [0, 1]
    assert float(configured["image"].min()) >= 0.0 and float(configured["image"].max()) <= 1.0


@pytest.mark.parametrize("bundle", ALL_BUNDLES)
def test_metadata_tells_each_data_sets_channels_and_classes(bundle):
    meta = read_json(os.path.join(_configs(bundle), "metadata.json"))
    by_dataset = meta["network_data_format_by_dataset"]
    default = read_json(os.path.join(_configs(bundle), "train.json"))["dataset"]
    assert meta["network_data_format"] == by_dataset[default]
    for dataset in ("acdc", "isic"):
        if dataset not in by_dataset:
            continue
        spec, io = dataset_spec(dataset), by_dataset[dataset]
        assert io["inputs"]["image"]["num_channels"] == spec["in_channels"]
        assert io["outputs"]["pred"]["num_channels"] == spec["out_channels"]
        assert len(io["outputs"]["pred"]["channel_def"]) == spec["out_channels"]
    assert "decathlon" in by_dataset
    assert ("isic" in by_dataset) == (bundle not in BUNDLES_3D)
    evaluate = read_json(os.path.join(_configs(bundle), "evaluate.json"))
    assert set(evaluate["metrics"]) <= set(meta["eval_metrics"])
    assert "token_sparsity" in meta["eval_metrics"]


def test_generated_files_name_no_work_item_and_link_only_inside_the_bundle():
    """Bundle READMEs come from the project's docs: links to its pages (``../benchmarks.md``) would be broken in a
    downloaded bundle, and no generated file names a work item."""
    item = "issue"  # spelled apart so that the tracked tree itself names no work item
    assert WORK_ITEM.search(f"see notes/{item}12.md") and WORK_ITEM.search(f"Why ({item.title()} 17):")
    assert not WORK_ITEM.search("tissue, 12 classes")
    for name in ALL_BUNDLES:
        for rel, content in bundle_files(name).items():
            assert not WORK_ITEM.search(content), (name, rel)
        readme = bundle_files(name)["docs/README.md"]
        for target in re.findall(r"\]\(([^)]+)\)", readme):
            assert target.startswith(("http://", "https://")) or os.path.exists(
                os.path.join(ROOT, "bundles", name, "docs", target)), (name, target)


def test_project_docs_become_bundle_text():
    text = "Measured: [the benchmarks](../benchmarks.md), [design §6.1](../design.md#61-prompt-restricted-decoding)."
    assert bundle_text(text) == "Measured: the benchmarks, design §6.1."
    assert bundle_text("[MONAI](https://monai.io)") == "[MONAI](https://monai.io)"


def test_one_readme_template_for_2d_and_3d():
    two, three = bundle_files("unetr_prato")["docs/README.md"], bundle_files("unetr3d_prato")["docs/README.md"]
    headings = [line for line in two.splitlines() if line.startswith("## ")]
    assert headings[:3] == ["## Commands (from this bundle's folder)", "## Keys to override", "## Configs"]
    assert [line for line in three.splitlines() if line.startswith("## ")][:3] == headings[:3]
    assert "--config_file configs/inference.json --dataset btcv --input_dir" in three  # no data folder needed


@pytest.mark.parametrize("dataset_dir", [None, "/no/such/folder"])
def test_btcv_spec_without_its_data_folder_is_btcvs_14_classes(dataset_dir):
    spec = dataset_spec("btcv", dataset_dir)
    assert spec["in_channels"] == 1 and spec["out_channels"] == 14 == len(BTCV_LABELS)
    assert spec["modality"] == "CT" and spec["class_names"][0] == "spleen" and len(spec["class_names"]) == 13
    with pytest.raises(ValueError, match="the decathlon spec is read from its dataset description in dataset_dir"):
        dataset_spec("decathlon")


def test_bundle_root_is_the_bundles_folder_and_volumes_share_their_loading():
    for name in ALL_BUNDLES:
        train = read_json(os.path.join(_configs(name), "train.json"))
        assert train["bundle_root"] == "."
        if "loading_by_dataset" in train:
            assert train["loading_by_dataset"]["btcv"] == "@loading_by_dataset#decathlon"
