"""Physical removal of pruned output channels, only where it provably changes no output.

A pruned output channel ``c`` of a layer (all weight codes 0) is removed from the layer, its BatchNorm, every
coupled producer and every consumer's input exactly when

1. every coupled producer (layers whose outputs are added / concatenated / ... into the same tensor channel, as
   torch-pruning's dependency graph finds them) has an all-zero weight row for it too;
2. at every consumer's input *after that consumer's input quantizer* the channel is exactly 0, or, for a consumer
   that is a ``Linear`` or an ungrouped conv without padding (and without an int32 bias), a constant that is the
   same on two different probe inputs (with all weight rows zero the value is input-independent, so two probes
   decide it). Such a constant is folded into the consumer's bias (``bias += W[:, c] * value``, summed over the
   kernel), which is exact because every output position of an unpadded consumer sees it in full. A constant
   (a bias or BN shift that survives an activation, a min-max grid whose range excludes 0) in front of a padded or
   grouped consumer keeps the channel;
3. the path has no multiplicative op (SE-style gates), no normalisation across channels (LayerNorm, GroupNorm),
   no attention / reshape torch-pruning cannot map, and does not reach the model output.

Everything else stays as zero-code rows. torch-pruning does the slicing; the decision is this module's.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import Tensor, nn

from .layers import DeployLayerMixin, is_deploy_layer

log = logging.getLogger(__name__)

_OK_TYPES = {"CONV", "BN", "LINEAR", "DEPTHWISE_CONV", "CONCAT", "SPLIT", "ELEMENTWISE", "RESHAPE", "SLICE"}
_MULTIPLICATIVE = ("Mul", "Div", "Sigmoid", "Softmax", "Bmm", "MatMul", "Mm", "Norm", "Var", "Std")


def _probe(example: Tensor, seed: int) -> Tensor:
    return torch.randn(example.shape, generator=torch.Generator().manual_seed(seed)).to(example.device)


def _probe_inputs(model: nn.Module, example: Tensor) -> list[dict[nn.Module, Tensor]]:
    """For two probe inputs: ``{consumer layer: its input after its input quantizer}``."""
    seen: list[dict[nn.Module, Tensor]] = []
    gen = torch.Generator().manual_seed(0)
    for k in range(2):
        x = torch.randn(example.shape, generator=gen) * (1.0 + k)
        rec: dict[nn.Module, Tensor] = {}
        handles = []
        for m in model.modules():
            if is_deploy_layer(m) and m.input_quantizer is not None:
                handles.append(m.input_quantizer.register_forward_hook(
                    lambda mod, inp, out, layer=m: rec.__setitem__(layer, out.detach())))
            elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                handles.append(m.register_forward_pre_hook(
                    lambda mod, inp, layer=m: rec.__setitem__(layer, inp[0].detach())))
        try:
            with torch.no_grad():
                model(x.to(example.device))
        finally:
            for h in handles:
                h.remove()
        seen.append(rec)
    return seen


def _zero_rows(m: nn.Module) -> Tensor:
    if is_deploy_layer(m):
        return m.pruned.clone()
    w = m.weight.detach()
    return (w.reshape(w.shape[0], -1) == 0).all(1)


def _folds_constants(m: nn.Module) -> bool:
    """Whether a constant input channel of ``m`` can be folded exactly into its bias (no border, no groups)."""
    if getattr(m, "b_scale", None) is not None or getattr(m, "same_pad", False):
        return False
    if isinstance(m, nn.Linear):
        return True
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        pad = m.padding
        unpadded = pad == "valid" or (not isinstance(pad, str) and all(int(p) == 0 for p in pad))
        return unpadded and m.groups == 1
    return False


def _constant_values(probes: list[dict[nn.Module, Tensor]], mod: nn.Module, idx: Tensor) -> Tensor:
    """``[k, S]``: the value of each of the ``k`` channels ``idx`` (``[k, S]`` feature indices each) at the input of
    ``mod`` where it is the same at every sample (and, for a conv, every position) of every probe, else NaN."""
    conv = isinstance(mod, (nn.Conv1d, nn.Conv2d))
    k, per = idx.shape
    # [k, S, samples x positions x probes]; a conv channel is one feature over all its positions
    v = torch.cat([rec[mod].movedim(1 if conv else -1, 0)[idx.reshape(-1)].reshape(k, per, -1) for rec in probes], -1)
    if conv:
        v = v.reshape(k, 1, -1)
    first = v[..., 0]
    return torch.where((v == v[..., :1]).all(-1), first, torch.full_like(first, float("nan")))


def _dep_kind(dep: Any) -> tuple[str, str]:
    """(op type name, handler name) of a torch-pruning dependency."""
    t = dep.target.type
    return getattr(t, "name", str(t)), getattr(dep.handler, "__name__", str(dep.handler))


def _decide(group: Any, cands: list[int], probes: list[dict[nn.Module, Tensor]], names: dict[nn.Module, str]
            ) -> tuple[Tensor, str]:
    """Boolean ``[len(cands)]``: removable; and the reason for the others (first failing condition)."""
    k = len(cands)
    ok = torch.ones(k, dtype=torch.bool)
    reason = ""
    consumers = 0
    for dep, idxs in group:
        kind, handler = _dep_kind(dep)
        mod = dep.target.module
        name = names.get(mod, getattr(dep.target, "name", "?"))
        if kind not in _OK_TYPES:
            return torch.zeros(k, dtype=torch.bool), f"path through {kind} (`{str(name)[:40]}`)"
        if kind == "ELEMENTWISE" and any(op in str(dep.target.name) for op in _MULTIPLICATIVE):
            return torch.zeros(k, dtype=torch.bool), "multiplicative path (SE-style gate)"
        if kind not in ("CONV", "LINEAR", "DEPTHWISE_CONV"):
            continue
        if kind == "CONV" and getattr(mod, "groups", 1) > 1:
            return torch.zeros(k, dtype=torch.bool), f"grouped conv `{name}` (torch-pruning cannot slice it)"
        idx = torch.as_tensor(list(idxs), dtype=torch.long)
        if idx.numel() % k:
            return torch.zeros(k, dtype=torch.bool), f"torch-pruning maps {k} channels to {idx.numel()} at `{name}`"
        idx = idx.view(k, -1)
        if "out" in handler or kind == "DEPTHWISE_CONV":  # a producer: its rows must be zero too
            zero = _zero_rows(mod)[idx].all(1)
            if not bool(zero.all()) and not reason:
                reason = f"coupled producer `{name}` keeps it"
            ok &= zero
        if "in" in handler or kind == "DEPTHWISE_CONV":  # a consumer: its quantized input must be 0 (or foldable)
            consumers += 1
            if any(mod not in rec for rec in probes):
                return torch.zeros(k, dtype=torch.bool), f"consumer `{name}` was not reached by the probe"
            values = _constant_values(probes, mod, idx)
            zero = (values == 0).all(1)
            if _folds_constants(mod):
                zero |= ~values.isnan().any(1)
            if not bool(zero.all()) and not reason:
                reason = (f"nonzero at the input of `{name}` (a bias/BN shift or a range excluding 0, in front of a "
                          "padded or grouped layer; or a padded/depthwise layer in between)")
            ok &= zero
    if consumers == 0:
        return torch.zeros(k, dtype=torch.bool), "feeds the model output"
    return ok, reason


def remove_pruned_channels(model: nn.Module, example: Tensor) -> tuple[nn.Module, list[dict]]:
    """The model without the pruned output channels of its deploy layers whose removal is exact (see the module
    docstring), and one report row per layer with pruned channels: ``{"layer", "channels", "removed", "kept_zero",
    "reason"}``. The outputs on probe inputs are checked to stay the same. ``model`` itself is not changed."""
    model = copy.deepcopy(model)
    names = {m: n for n, m in model.named_modules()}
    layers = [(n, m) for n, m in model.named_modules() if is_deploy_layer(m) and bool(m.pruned.any())]
    report = {n: {"layer": n, "channels": int(m.pruned.numel()), "removed": 0,
                  "kept_zero": int(m.pruned.sum()), "kept_zero_all": int(m.pruned.sum()), "reason": ""}
              for n, m in layers}
    if not layers:
        return model, []
    try:
        import torch_pruning as tp

        with torch.enable_grad():  # torch-pruning traces the autograd graph
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    except Exception as err:  # noqa: BLE001 - any tracing failure means: keep everything masked
        for r in report.values():
            r["reason"] = f"torch-pruning cannot trace the model ({type(err).__name__})"
        return model, _rows(report)
    probes = _probe_inputs(model, example)
    with torch.no_grad():
        before = [model(_probe(example, s)) for s in (1, 2)]
    plans: list[tuple[Any, list[int]]] = []
    planned: dict[nn.Module, str] = {}  # producers already covered by a coupled layer's group
    for name, m in layers:
        if m in planned:
            report[name]["reason"] = f"coupled with `{planned[m]}`"
            continue
        cands = [int(i) for i in m.pruned.nonzero().view(-1)]
        try:
            handler = dg.get_pruner_of_module(m).prune_out_channels
            group = dg.get_pruning_group(m, handler, idxs=cands)
            ok, reason = _decide(group, cands, probes, names)
            for dep, _ in group:
                kind, h = _dep_kind(dep)
                if is_deploy_layer(dep.target.module) and ("out" in h or kind == "DEPTHWISE_CONV"):
                    planned.setdefault(dep.target.module, name)
        except Exception as err:  # noqa: BLE001
            ok, reason = torch.zeros(len(cands), dtype=torch.bool), f"torch-pruning: {type(err).__name__}"
        chosen = [c for c, good in zip(cands, ok.tolist()) if good]
        if len(chosen) == int(m.pruned.numel()):  # every channel pruned: a layer cannot have 0 outputs
            chosen, ok, reason = chosen[:-1], ok.clone(), "every channel pruned: one zero channel kept"
            ok[-1] = False
        report[name]["reason"] = reason if not bool(ok.all()) else ""
        if chosen:
            plans.append((m, chosen))
    original = copy.deepcopy(model) if plans else model
    try:
        _apply(dg, plans, names, report, probes)
    except Exception as err:  # noqa: BLE001 - torch-pruning could not slice: keep everything as zero rows
        for r in report.values():
            r["removed"], r["kept_zero"] = 0, r["kept_zero_all"]
            r["reason"] = f"torch-pruning failed to slice ({type(err).__name__}: {str(err)[:60]})"
        return original, _rows(report)
    with torch.no_grad():
        after = [model(_probe(example, s)) for s in (1, 2)]
    for a, b in zip(before, after):
        tol = 1e-4 * float(a.abs().max()) + 1e-6
        err = float((a - b).abs().max())
        if err > tol:
            raise AssertionError(f"Removing pruned channels changed the outputs by {err:.3g}; please report this.")
    return model, _rows(report)


def _rows(report: dict[str, dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "kept_zero_all"} for r in report.values()]


def _fold_constant_inputs(mod: nn.Module, idx: Tensor, probes: list[dict[nn.Module, Tensor]]) -> None:
    """Add the contribution of the constant input features ``idx`` (``[k, S]``) to ``mod``'s bias (creating one)."""
    values = _constant_values(probes, mod, idx)  # [k, S], no NaN: checked by `_decide`
    if bool((values == 0).all()):
        return
    with torch.no_grad():
        w = mod.weight.detach()
        if isinstance(mod, nn.Linear):
            delta = w[:, idx.reshape(-1)] @ values.reshape(-1).to(w.dtype)
        else:  # every output position sees the whole kernel of a constant channel (no padding)
            delta = w[:, idx[:, 0]].reshape(w.shape[0], idx.shape[0], -1).sum(-1) @ values[:, 0].to(w.dtype)
        if mod.bias is None:
            mod.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device), requires_grad=False)
        mod.bias.add_(delta)


def _apply(dg: Any, plans: list[tuple[Any, list[int]]], names: dict[nn.Module, str], report: dict[str, dict],
           probes: list[dict[nn.Module, Tensor]]) -> None:
    done: set[int] = set()
    for m, chosen in plans:
        handler = dg.get_pruner_of_module(m).prune_out_channels
        group = dg.get_pruning_group(m, handler, idxs=chosen)
        for dep, idxs in group:  # constants that reach an unpadded consumer move into its bias first
            kind, h = _dep_kind(dep)
            mod = dep.target.module
            if kind in ("CONV", "LINEAR") and "in" in h and _folds_constants(mod) and mod in probes[0]:
                idx = torch.as_tensor(list(idxs), dtype=torch.long).view(len(chosen), -1)
                _fold_constant_inputs(mod, idx, probes)
        for dep, idxs in group:
            mod = dep.target.module
            kind, h = _dep_kind(dep)
            if isinstance(mod, DeployLayerMixin) and ("out" in h or kind == "DEPTHWISE_CONV"):
                if id(mod) in done:
                    continue
                keep = torch.ones(mod.weight.shape[0], dtype=torch.bool)
                keep[torch.as_tensor(list(idxs), dtype=torch.long)] = False
                mod.channel_slice_(keep.nonzero().view(-1))
                done.add(id(mod))
                r = report.get(names[mod])
                if r is not None:
                    r["removed"] = len(idxs)
                    r["kept_zero"] = r["channels"] - r["removed"] - int((~mod.pruned).sum())
        group.prune()
