"""Human-readable summaries of an export."""

from __future__ import annotations


def removal_table(report: list[dict]) -> str:
    """Per layer: output channels, removed, kept as zero rows (and why)."""
    if not report:
        return "pruned channels: none"
    width = max(12, *(len(r["layer"]) for r in report))
    lines = [f"{'layer':<{width}}  {'channels':>8} {'removed':>8} {'zero rows':>9}  reason kept"]
    for r in report:
        lines.append(f"{r['layer']:<{width}}  {r['channels']:>8} {r['removed']:>8} {r['kept_zero']:>9}  "
                     f"{r.get('reason', '')}")
    removed = sum(r["removed"] for r in report)
    zero = sum(r["kept_zero"] for r in report)
    lines.append(f"pruned channels: {removed} removed, {zero} kept as zero rows")
    return "\n".join(lines)
