"""Producer map (`bb_lightning.cost.channels`) and input-side pruning credit in the cost facts (spec 4.1, rho_in).

The credit is checked against MACs counted on a network whose pruned channels were physically sliced away (the
producer's output rows and the consumer's input columns), so the expectation does not reuse the formula under test.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from bb_lightning.config import WrapConfig
from bb_lightning.cost.channels import find_producers
from bb_lightning.cost.facts import LayerCost, config_costs, cost_totals, credit_input_pruning, layer_costs
from bb_lightning.cost.macs import count_macs
from bb_lightning.export.build import build_config
from bb_lightning.export.config import MixedPrecisionConfig
from bb_lightning.errors import BBConfigError
from bb_lightning.methods.bayesian_bits.config import BayesianBitsConfig
from bb_lightning.wrap.swap import apply_plan, plan_layers


def layers_of(net: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in net.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))}


class Branchy(nn.Module):
    """Every way a channel can or cannot keep its identity between two layers."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.chain = nn.Conv2d(8, 8, 3, padding=1)  # <- stem via BN, ReLU, max-pool, * 0.5
        self.res = nn.Conv2d(8, 8, 1)  # <- stem + chain (residual add): none
        self.se = nn.Conv2d(8, 8, 1)  # gate
        self.after_se = nn.Conv2d(8, 8, 1)  # <- res * sigmoid(se(...)): none
        self.ln = nn.LayerNorm(8)
        self.after_ln = nn.Linear(8, 8)  # <- LayerNorm over channels: none
        self.soft = nn.Conv2d(8, 8, 1)  # <- softmax over channels: none
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # <- soft via GELU, dropout: depthwise
        self.head = nn.Linear(8 * 4 * 4, 10)  # <- dw via avg-pool to 4x4 and flatten (16 features per channel)
        self.shared = nn.Linear(10, 10)  # called twice: none

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.max_pool2d(F.relu(self.bn(self.stem(x))), 2) * 0.5
        c = self.chain(s)
        r = self.res(c + s)
        g = self.after_se(r * torch.sigmoid(self.se(r.mean((2, 3), keepdim=True))))
        t = self.after_ln(self.ln(g.mean((2, 3))))
        q = self.soft(torch.softmax(g, dim=1) + t[:, :, None, None])
        d = self.dw(F.dropout(F.gelu(q), 0.1, self.training))
        h = self.head(torch.flatten(F.adaptive_avg_pool2d(d, 4), 1))
        return self.shared(self.shared(h))


def test_producers_follow_only_channel_preserving_ops():
    net = Branchy()
    got = find_producers(net, layers_of(net), torch.randn(2, 3, 16, 16))
    assert got == {"chain": "stem", "se": "res", "dw": "soft", "head": "dw"}


def test_producers_lenet_chain_through_flatten():
    net = nn.Sequential(
        nn.Conv2d(1, 32, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(1024, 512), nn.ReLU(), nn.Dropout(0.5), nn.Linear(512, 10),
    )  # fmt: skip
    assert find_producers(net, layers_of(net), torch.zeros(1, 1, 28, 28)) == {"3": "0", "7": "3", "10": "7"}


@pytest.mark.parametrize(
    "arch,expected",
    [
        ("resnet18", {"layer1.0.conv1": "conv1", "layer1.0.conv2": "layer1.0.conv1", "fc": None,
                      "layer1.1.conv1": None, "layer2.0.downsample.0": None}),
        ("mobilenetv3_small_050", {"blocks.0.0.se.conv_reduce": "blocks.0.0.conv_dw", "blocks.0.0.conv_pw": None}),
        ("vit_tiny_patch16_224", {"blocks.0.mlp.fc2": "blocks.0.mlp.fc1", "blocks.0.mlp.fc1": None,
                                  "blocks.0.attn.proj": None}),
        ("convnext_atto", {"stages.0.blocks.0.mlp.fc2": "stages.0.blocks.0.mlp.fc1",
                           "stages.0.blocks.0.mlp.fc1": None}),
        ("efficientnet_b0", {"blocks.1.0.conv_dw": "blocks.1.0.conv_pw", "blocks.1.0.conv_pwl": None}),
        ("regnetx_002", {"s1.b1.conv2.conv": "s1.b1.conv1.conv"}),
    ],
)
def test_producers_on_timm_models(arch, expected):
    model = timm.create_model(arch, pretrained=False, num_classes=10)
    size = model.pretrained_cfg["input_size"][1:]
    got = find_producers(model, layers_of(model), torch.zeros(1, 3, *size))
    for layer, producer in expected.items():
        assert got.get(layer) == producer, layer


def test_credit_matches_macs_of_the_physically_sliced_network():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.ReLU(),
        nn.Conv2d(8, 6, 1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 5),
    )  # fmt: skip
    x = torch.zeros(1, 3, 8, 8)
    keep = {
        "0": torch.tensor([1, 0, 1, 1, 0, 0, 1, 1], dtype=torch.bool),
        "2": torch.tensor([1, 1, 0, 1, 1, 1, 1, 0], dtype=torch.bool),
        "4": torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool),
        "7": None,
    }
    recs = plan_layers(net, WrapConfig(), x)
    assert [r.producer for r in recs] == [None, "0", "2", "4"]
    costs = [LayerCost(r.name, r.macs, r.params, 8, 8, int(keep[r.name].sum()) if keep[r.name] is not None else
                       r.weight_shape[0], r.weight_shape[0], type=r.type) for r in recs]
    credit_input_pruning(costs, {r.name: r.producer for r in recs}, keep, {r.name: r.weight_shape for r in recs})

    # the sliced network, counted by hand: pruned output channels and the consumers' matching inputs are gone
    k0, k2, k4 = (int(keep[n].sum()) for n in ("0", "2", "4"))
    sliced = nn.Conv2d(3, k0, 3)
    want = {"0": count_macs(sliced, {"l": sliced}, x)["l"].macs}  # k0 * 27 * 36
    # grouped conv (4 groups of 2): a kept output channel o reads the kept inputs of its own group o // 2
    want["2"] = sum(9 * 36 * int(keep["0"].view(4, 2)[o // 2].sum()) for o in range(8) if keep["2"][o])
    want["4"] = k4 * k2 * 36  # 1x1 conv on 6x6
    want["7"] = 5 * k4 * 36  # the classifier reads 36 features of each kept channel
    for c, r in zip(costs, recs):
        assert c.macs * c.kept_macs_fraction == pytest.approx(want[r.name], rel=1e-12), r.name
        assert c.weight_bits == pytest.approx(8 * r.params * c.kept_macs_fraction, rel=1e-12)


def test_live_and_saved_costs_agree_and_the_config_keeps_the_producer(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )  # fmt: skip
    x = torch.zeros(1, 1, 14, 14)
    recs = plan_layers(net, WrapConfig(), x)
    mods = apply_plan(net, recs, "bayesian_bits", BayesianBitsConfig(gate_init=(6, -6, -6, -6)))
    net.train()
    with torch.no_grad():
        net(torch.rand(4, 1, 14, 14))
        mods["0"].weight_quantizer.prune_log_alpha[:3] = -6.0  # 5 of 8 kept
        mods["3"].weight_quantizer.prune_log_alpha[::2] = -6.0  # 8 of 16 kept
    live = layer_costs(recs, mods, 8)
    assert [c.kept_macs_fraction for c in live] == pytest.approx([5 / 8, 8 / 16 * 5 / 8, 8 / 16])
    config = build_config(recs, mods, "bayesian_bits", 8)
    assert [v["producer"] for v in config.layers.values()] == [None, "0", "3"]
    path = config.save(tmp_path / "c.json")
    saved = config_costs(MixedPrecisionConfig.load(path))
    assert [c.bops for c in saved] == pytest.approx([c.bops for c in live], rel=1e-9)
    assert cost_totals(saved)["relative_bops"] == pytest.approx(config.totals["relative_bops"], rel=1e-9)


def test_config_without_producer_is_still_valid_and_a_bad_one_is_named(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    recs = plan_layers(net, WrapConfig(), torch.zeros(1, 1, 8, 8))
    mods = apply_plan(net, recs, "bayesian_bits", BayesianBitsConfig())
    net.train()
    with torch.no_grad():
        net(torch.rand(2, 1, 8, 8))
    d = build_config(recs, mods, "bayesian_bits", 8).to_dict()
    del d["layers"]["3"]["producer"]  # a config written before producers were recorded: no input-side credit
    assert MixedPrecisionConfig.from_dict(d).layers["3"].get("producer") is None
    d["layers"]["3"]["producer"] = "nope"
    with pytest.raises(BBConfigError, match=r"layers\['3'\]\.producer"):
        MixedPrecisionConfig.from_dict(d)


@pytest.mark.parametrize(
    "arch", ["resnet18", "mobilenetv3_small_050", "efficientnet_b0", "vit_tiny_patch16_224", "convnext_atto",
             "regnetx_002", "densenet121", "test_efficientnet", "test_byobnet", "test_nfnet"]
)
def test_a_pruned_producer_channel_reaches_its_consumers_as_an_input_independent_value(arch):
    """What the credit assumes: zero the weights of output channel 0 of every producer; then the consumers' matching
    input channel (or its features after a flatten) no longer depends on the image, so it folds into a bias."""
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=10).eval()
    size = model.pretrained_cfg["input_size"][1:]
    layers = layers_of(model)
    producers = find_producers(model, layers, torch.zeros(1, 3, *size))
    assert producers, arch
    with torch.no_grad():
        for p in set(producers.values()):
            layers[p].weight[0].zero_()
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in producers}
    handles = [layers[n].register_forward_pre_hook(lambda m, inp, n=n: seen[n].append(inp[0].detach()))
               for n in producers]
    with torch.no_grad():
        for seed in (1, 2):
            model(torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed)))
    for h in handles:
        h.remove()
    varies = False
    for name, (a, b) in seen.items():
        m, c_p = layers[name], layers[producers[name]].weight.shape[0]
        if isinstance(m, nn.Linear):
            per = a.shape[-1] // c_p  # features per producer channel (1 unless flattened)
            a0, b0 = a[..., :per], b[..., :per]
        else:
            a0, b0 = a[:, 0], b[:, 0]
        assert torch.allclose(a0, b0, atol=1e-5) and torch.allclose(a0[0], a0[1], atol=1e-5), (arch, name)
        varies = varies or not torch.allclose(a, b)
    assert varies  # the other channels still see the image
